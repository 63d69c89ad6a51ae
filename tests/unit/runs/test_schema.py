"""Run folders whose JSON has the wrong types, sizes or depth: refused at import, listed as damaged on
disk, and never a crash on the pages' and the CLI's way of reading a run (core.runs.schema)."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lab_helpers import make_zip

from core.cli import main as cli
from core.present.tables import compare_rows, format_table
from core.runs.archives import export_run_zip, import_run_zip
from core.runs.folders import INCOMPLETE_PREFIX, list_runs, open_run
from core.runs.schema import MAX_EPOCHS, MAX_FILE_BYTES
from core.settings.errors import LabError
from core.settings.text import percent


def edit(folder: Path, name: str, change) -> None:
    path = folder / name
    value = json.loads(path.read_text())
    result = change(value)
    path.write_text(result if isinstance(result, str) else json.dumps(value if result is None else result))


def set_key(*keys, value):
    def change(doc):
        node = doc
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return change


NESTED = "[" * 100_000 + "]" * 100_000
# The attacks a probe of a hosted Lab made, and the classes around them.
HOSTILE = {
    "finished_at a string": ("metrics.json", set_key("finished_at", value="yesterday")),
    "finished_at 1e300": ("metrics.json", set_key("finished_at", value=1e300)),
    "finished_at negative": ("metrics.json", set_key("finished_at", value=-5)),
    "total_params a string": ("metrics.json", set_key("total_params", value="many")),
    "total_params null": ("metrics.json", set_key("total_params", value=None)),
    "accuracy 7": ("metrics.json", set_key("final_val_accuracy", value=7)),
    "metrics a list": ("metrics.json", lambda doc: [1, 2]),
    "Infinity": ("metrics.json", lambda doc: json.dumps(doc)[:-1] + ', "x": Infinity}'),
    "an int of 5000 digits": ("metrics.json", lambda doc: json.dumps(doc)[:-1] + ', "x": ' + "9" * 5000 + "}"),
    "10,001 epochs": ("history.json", lambda rows: rows[:1] * (MAX_EPOCHS + 1)),
    "history over its byte limit": ("history.json", lambda rows: [{"note": "x" * 4000}] * 1100),
    "an epoch with a string loss": ("history.json", lambda rows: [{**rows[0], "loss": "low"}]),
    "an epoch as a number": ("history.json", lambda rows: [3]),
    "history nested 100,000 deep": ("history.json", lambda rows: NESTED),
    "config nested 100,000 deep": ("config.json", lambda doc: json.dumps(doc)[:-1] + ', "x": ' + NESTED + "}"),
    "config nested 12 deep": ("config.json", set_key("x", value=json.loads("[" * 12 + "]" * 12))),
    "a 1 MB class name": ("config.json", set_key("class_names", value=["a" * 10**6, "b"])),
    "class names twice": ("config.json", set_key("class_names", value=["a", "a"])),
    "image size a string": ("config.json", set_key("data", "image_size", value="big")),
    "model kind a list": ("config.json", set_key("train", "model", value=["x"])),
    "not UTF-8": ("config.json", lambda doc: b"\xff\xfe{}".decode("latin-1")),
}


@pytest.fixture(scope="module")
def baseline_zip(trained_runs) -> bytes:
    return export_run_zip(trained_runs["baseline"])


def unpacked(zip_bytes: bytes, folder: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        archive.extractall(folder)
    return next(p for p in folder.iterdir() if p.is_dir())


def zipped(run: Path) -> bytes:
    return make_zip({f"{run.name}/{p.relative_to(run).as_posix()}": p.read_bytes()
                     for p in run.rglob("*") if p.is_file()})


def read_like_the_pages(runs_dir: Path) -> None:
    """What the Experiments and Predict pages and `python -m core runs` compute from each listed run."""
    for record in list_runs(runs_dir).runs:
        m = record.metrics
        time.strftime("%d %b %H:%M", time.localtime(m.get("finished_at", 0)))
        f"{m.get('total_params', 0):,} {m.get('trainable_params', 0):,} {record.image_size} {record.label}"
        percent(m.get("best_val_accuracy"))
        str(record.model_kind) + ", ".join(record.class_names)
        format_table(*compare_rows([record]))
        for row in record.history:
            [float(row[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in row]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli(["runs", "--runs-dir", str(runs_dir)]) == 0
    assert "Traceback" not in err.getvalue()


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_run_json_is_refused_at_import_and_listed_as_damaged_on_disk(case, baseline_zip, tmp_path):
    name, change = HOSTILE[case]
    run = unpacked(baseline_zip, tmp_path / "src")
    edit(run, name, change)

    runs = tmp_path / "runs"
    with pytest.raises(LabError) as refused:
        import_run_zip(zipped(run), runs)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 300
    assert not runs.exists() or list(runs.iterdir()) == []

    shutil.copytree(run, runs / run.name)  # copied by hand instead: shown as damaged, never opened
    listing = list_runs(runs)
    assert listing.runs == [] and listing.incomplete == [runs / run.name]
    with pytest.raises(LabError, match="damaged"):
        open_run(runs / run.name)
    read_like_the_pages(runs)


def test_the_limits_leave_room_for_a_real_run(trained_runs):
    for name, limit in MAX_FILE_BYTES.items():
        path = trained_runs["mobilenet_v2"] / name
        if path.is_file():
            assert path.stat().st_size * 20 < limit, name
    assert open_run(trained_runs["mobilenet_v2"]).layers


def test_the_schema_takes_as_many_classes_as_the_data_sources_let_through():
    """One limit: a dataset the sources open must give a run the schema lists, never a damaged one."""
    from core.runs.schema import RunSchemaError, check_config
    from core.settings.config import MAX_CLASSES

    check_config({"class_names": [f"c{i}" for i in range(MAX_CLASSES)]})
    with pytest.raises(RunSchemaError, match=f"1 to {MAX_CLASSES:,} class names"):
        check_config({"class_names": [f"c{i}" for i in range(MAX_CLASSES + 1)]})


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "half"])
def test_an_empty_or_truncated_model_file_is_listed_as_damaged(content, trained_runs, tmp_path):
    run = tmp_path / "runs" / trained_runs["baseline"].name
    shutil.copytree(trained_runs["baseline"], run)
    model = (run / "model.h5").read_bytes()
    (run / "model.h5").write_bytes(model[:len(model) // 2] if content == "half" else content)
    listing = list_runs(tmp_path / "runs")
    assert listing.runs == [] and listing.incomplete == [run]
    with pytest.raises(LabError, match="model.h5 is empty, truncated"):
        open_run(run)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = {
    "config.json": [("class_names",), ("data", "image_size"), ("data", "batch_size"), ("data", "source"),
                    ("train", "model"), ("data",), ("train",), ("dataset", "counts"), ("class_names", 0)],
    "metrics.json": [("finished_at",), ("total_params",), ("trainable_params",), ("final_val_accuracy",),
                     ("best_val_accuracy",), ("seconds_per_epoch",), ("stopped_early",)],
    "history.json": [(0,), (0, "loss"), (0, "accuracy"), (0, "val_accuracy"), (0, "seconds"), (-1, "phase")],
}


@st.composite
def mutations(draw):
    name = draw(st.sampled_from(sorted(FIELDS)))
    path = draw(st.sampled_from(FIELDS[name]))
    return name, path, draw(JSON)


def apply(folder: Path, name: str, path: tuple, value) -> None:
    """Set the value at path; a path an earlier mutation already replaced a parent of is left alone."""
    doc = json.loads((folder / name).read_text())
    node = doc
    try:
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        return
    (folder / name).write_text(json.dumps(doc))  # NaN and Infinity are written as JSON's extensions


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(mutations(), min_size=1, max_size=3))
def test_fuzzed_run_json_is_either_refused_in_one_line_or_read_without_error(changes, baseline_zip, tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    run = unpacked(baseline_zip, base / "src")
    for name, path, value in changes:
        apply(run, name, path, value)
    runs = base / "runs"
    try:
        imported = import_run_zip(zipped(run), runs)
    except LabError as exc:
        assert "\n" not in str(exc)
        assert not runs.exists() or not any(p.name.startswith(INCOMPLETE_PREFIX) for p in runs.iterdir())
        shutil.copytree(run, runs / run.name)  # the same files on disk: listed as damaged or readable
    else:
        assert list_runs(runs).runs[0].path == imported.path
    read_like_the_pages(runs)


@pytest.mark.parametrize("content", [NESTED, json.dumps([{"name": "x", "params": "many"}]), json.dumps({"a": 1})])
def test_a_damaged_layer_table_is_left_out_of_an_import_and_ignored_on_disk(content, baseline_zip, tmp_path):
    run = unpacked(baseline_zip, tmp_path / "src")
    (run / "layers.json").write_text(content)
    imported = import_run_zip(zipped(run), tmp_path / "runs")
    assert not (imported.path / "layers.json").exists()
    assert any("layers.json" in w for w in imported.warnings)
    shutil.copy(run / "layers.json", imported.path / "layers.json")  # copied by hand: the page falls back
    [record] = list_runs(tmp_path / "runs").runs
    assert record.layers is None and "Total params" in record.summary
