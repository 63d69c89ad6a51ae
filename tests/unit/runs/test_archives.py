"""Run folders as zips: a run trained elsewhere is imported safely and works here like one trained here."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from lab_helpers import make_zip, run_picker

from core.runs.archives import export_run_zip, import_run_file, import_run_zip
from core.runs.folders import INCOMPLETE_PREFIX, list_runs, open_run
from core.settings.errors import LabError, ModelFileError


def entries_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}


def left_behind(runs: Path) -> list[str]:
    return [p.name for p in runs.iterdir()] if runs.is_dir() else []


@pytest.fixture(scope="module")
def transfer_zip(trained_runs) -> bytes:
    return export_run_zip(trained_runs["mobilenet_v2"])


def zipped_by_hand(run_dir: Path) -> bytes:
    """The run folder as `zip -r` makes it: model.h5 still names its backbone by its path on this machine."""
    return make_zip({f"{run_dir.name}/{p.relative_to(run_dir).as_posix()}": p.read_bytes()
                     for p in sorted(run_dir.rglob("*")) if p.is_file()})


@pytest.fixture(scope="module")
def hand_zip(trained_runs) -> bytes:
    return zipped_by_hand(trained_runs["mobilenet_v2"])


def test_export_holds_the_run_folder_under_its_own_name_without_exports(trained_runs, tmp_path):
    import shutil

    run = tmp_path / trained_runs["baseline"].name
    shutil.copytree(trained_runs["baseline"], run)
    (run / "exports").mkdir()
    (run / "exports" / "model.tflite").write_bytes(b"\0" * 100)
    (run / ".config.json.tmp-1").write_text("{}")
    names = set(entries_of(export_run_zip(run)))
    top = {name.split("/")[0] for name in names}
    assert top == {run.name}
    assert {f"{run.name}/{f}" for f in ("config.json", "history.json", "metrics.json", "model.h5", "summary.txt",
                                        "layers.json", "evaluation.json")} <= names
    assert not [n for n in names if "/exports/" in n or "/." in n]


def test_an_imported_run_is_listed_charted_and_predicts_like_the_original(trained_runs, transfer_zip, tmp_path,
                                                                          demo_folder):
    from core.runs.predict import load_for_prediction, predict_bytes

    runs = tmp_path / "runs"
    imported = import_run_zip(transfer_zip, runs)
    original = open_run(trained_runs["mobilenet_v2"])
    assert imported.path == runs / original.run_id and imported.warnings == [] and imported.skipped == 0
    [record] = list_runs(runs).runs
    assert record.history == original.history and record.metrics == original.metrics
    assert record.config == original.config
    assert (record.path / "evaluation.json").is_file()
    images = [(p.name, p.read_bytes()) for p in sorted((demo_folder / "circles").glob("*.jpg"))[:3]]
    here = predict_bytes(load_for_prediction(record.path), images)
    there = predict_bytes(load_for_prediction(original.path), images)
    for a, b in zip(here, there, strict=True):
        assert a.label == b.label
        assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-6)


def test_a_second_import_of_the_same_run_gets_a_fresh_name(transfer_zip, tmp_path):
    first = import_run_zip(transfer_zip, tmp_path)
    second = import_run_zip(io.BytesIO(transfer_zip), tmp_path)
    assert first.path != second.path and second.path.name.startswith(first.path.name + "-imported-")
    assert len(list_runs(tmp_path).runs) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(INCOMPLETE_PREFIX)]


def test_a_zip_of_the_files_themselves_gets_a_run_id_and_foreign_files_are_left_out(transfer_zip, tmp_path):
    flat = {name.split("/", 1)[1]: data for name, data in entries_of(transfer_zip).items()}
    flat |= {"exports/model.tflite": b"\0", "notes.docx": b"x", "__MACOSX/._config.json": b"\0"}
    imported = import_run_zip(make_zip(flat), tmp_path)
    assert "-mobilenet_v2-" in imported.path.name
    assert imported.skipped == 3 and "3 file(s)" in imported.warnings[-1]
    assert not (imported.path / "exports").exists() and not (imported.path / "notes.docx").exists()


def test_a_file_named_like_the_run_folder_is_left_out(transfer_zip, tmp_path):
    entries = entries_of(transfer_zip)
    root = next(iter(entries)).split("/")[0]
    imported = import_run_zip(make_zip({root: b"not a folder", **entries}), tmp_path)
    assert imported.path.name == root and imported.skipped == 1
    assert open_run(imported.path).model_path.is_file()


def test_a_run_zipped_from_the_project_folder_is_found_one_level_down(transfer_zip, tmp_path):
    nested = {f"runs/{name}": data for name, data in entries_of(transfer_zip).items()}
    imported = import_run_zip(make_zip(nested), tmp_path)
    assert imported.path.name == next(iter(entries_of(transfer_zip))).split("/")[0]
    assert imported.skipped == 0


@pytest.mark.parametrize("name, message", [
    ("../run/config.json", "leaves its folder"),
    ("1:/run/x.json", "absolute path"),  # the stricter of the two drive tests the Lab had
])
def test_unsafe_members_are_refused_before_anything_is_written(transfer_zip, tmp_path, name, message):
    """Run imports are vetted by core.safety.zips, as dataset zips are; tests/unit/safety/test_zips.py
    holds every case (paths, links, encryption) for both."""
    data = make_zip(entries_of(transfer_zip) | {name: b"{}"})
    with pytest.raises(LabError, match=f"{message} .*; refusing to import it"):
        import_run_zip(data, tmp_path / "runs")
    assert left_behind(tmp_path / "runs") == []


def test_too_many_files_or_too_many_bytes_are_refused(transfer_zip, tmp_path):
    files = len(entries_of(transfer_zip))
    with pytest.raises(LabError, match=f"holds {files} files; a run folder has far fewer .the limit is {files - 1}"):
        import_run_zip(transfer_zip, tmp_path, max_files=files - 1)
    with pytest.raises(LabError, match="would unpack to more than"):
        import_run_zip(transfer_zip, tmp_path, max_bytes=1000)
    assert left_behind(tmp_path) == []


def test_sizes_are_counted_while_inflating_not_taken_from_the_headers(transfer_zip, tmp_path):
    """A zip whose headers understate its sizes is cut off while inflating (by the byte count here, or by
    zipfile's own check of the declared size), and nothing is kept."""
    entries = entries_of(transfer_zip)
    root = next(iter(entries)).split("/")[0]
    data = bytearray(make_zip(entries | {f"{root}/padding.txt": b"x" * 200_000}))
    # Rewrite the uncompressed size of padding.txt in its central-directory record to 10 bytes.
    name = f"{root}/padding.txt".encode()
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))
    data[at + 24:at + 28] = (10).to_bytes(4, "little")
    total = sum(len(v) for v in entries.values())
    with pytest.raises(LabError, match="understate|damaged"):
        import_run_zip(bytes(data), tmp_path, max_bytes=total + 100_000)
    assert left_behind(tmp_path) == []


@pytest.mark.parametrize("missing", ["model.h5", "history.json", "config.json"])
def test_an_incomplete_run_is_refused(transfer_zip, tmp_path, missing):
    entries = {k: v for k, v in entries_of(transfer_zip).items() if not k.endswith("/" + missing)}
    with pytest.raises(LabError, match="incomplete|no run folder"):
        import_run_zip(make_zip(entries), tmp_path)
    assert left_behind(tmp_path) == []


def test_two_runs_in_one_zip_and_non_zips_are_refused(trained_runs, transfer_zip, tmp_path):
    both = entries_of(transfer_zip) | entries_of(export_run_zip(trained_runs["baseline"]))
    with pytest.raises(LabError, match="2 run folders; import them one zip at a time"):
        import_run_zip(make_zip(both), tmp_path)
    with pytest.raises(LabError, match="not a zip"):
        import_run_zip(b"model.h5 but not zipped", tmp_path)


def replace_file(data: bytes, name: str, content: bytes) -> bytes:
    entries = entries_of(data)
    [key] = [k for k in entries if k.endswith("/" + name)]
    return make_zip(entries | {key: content})


def test_a_model_file_that_would_run_code_is_refused(transfer_zip, tmp_path):
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Lambda(lambda x: x * 2),
                                 tf_keras.layers.Dense(2)])
    path = tmp_path / "lambda.h5"
    model.save(str(path), save_format="h5")
    with pytest.raises(ModelFileError, match="Lambda"):
        import_run_zip(replace_file(transfer_zip, "model.h5", path.read_bytes()), tmp_path / "runs")
    assert left_behind(tmp_path / "runs") == []


@pytest.mark.parametrize("name, content, message", [
    ("history.json", b"[{\"loss\": \"NaN please\"}]", "not a set of numbers"),
    ("history.json", b"[]", "holds no epochs"),
    ("metrics.json", b"[1, 2]", "must each hold a JSON object"),
    ("config.json", b"{not json", "not valid JSON"),
    ("config.json", json.dumps({"class_names": ["a", "b", "c"]}).encode(), "2 outputs but its config lists 3"),
])
def test_json_the_pages_could_not_read_is_refused(transfer_zip, tmp_path, name, content, message):
    with pytest.raises(LabError, match=message):
        import_run_zip(replace_file(transfer_zip, name, content), tmp_path)
    assert left_behind(tmp_path) == []


def test_an_evaluation_pointing_outside_the_run_is_dropped_with_a_warning(transfer_zip, tmp_path):
    evaluation = json.loads(next(v for k, v in entries_of(transfer_zip).items() if k.endswith("/evaluation.json")))
    evaluation["wrong"] = [{"thumbnail": "../../../etc/hostname"}]
    imported = import_run_zip(replace_file(transfer_zip, "evaluation.json", json.dumps(evaluation).encode()),
                              tmp_path)
    assert not (imported.path / "evaluation.json").exists()
    assert any("evaluation" in w and "left out" in w for w in imported.warnings)
    assert open_run(imported.path).history  # the run itself is imported


def test_the_web_check_refuses_a_hub_module_in_a_server_folder(hand_zip, tmp_path):
    """The demo run's hub handle is a SavedModel in a temporary folder outside the Lab's own folders."""
    from core.models.hub import web_upload_handle_allowed

    with pytest.raises(ModelFileError, match="may not use"):
        import_run_zip(hand_zip, tmp_path, allowed_handle=web_upload_handle_allowed)
    assert left_behind(tmp_path) == []


def run_with_handle(trained_run: Path, handle: Path, dest: Path) -> Path:
    """A copy of a transfer run whose model.h5 points its KerasLayer at another SavedModel folder."""
    import shutil

    from core.models.architectures import build_model
    from core.safety.model_files import save_model
    from core.settings.config import ModelKind

    shutil.copytree(trained_run, dest)
    save_model(build_model(ModelKind.TRANSFER, 2, 64, str(handle)), dest / "model.h5", ["circles", "squares"])
    return dest


def test_a_hub_module_missing_here_is_imported_with_a_warning(trained_runs, demo_backbone, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere" / "backbone"
    shutil.copytree(demo_backbone, moved)
    run = run_with_handle(trained_runs["mobilenet_v2"], moved, tmp_path / "run")
    shutil.rmtree(moved)
    imported = import_run_zip(zipped_by_hand(run), tmp_path / "runs")
    assert any(str(moved) in w and "not here" in w for w in imported.warnings)
    # The Lab's own export cannot carry a backbone that is gone, and says how to get it back.
    with pytest.raises(LabError, match=f"loads the SavedModel folder '{moved}', which is not on this machine"):
        export_run_zip(run)


def test_import_run_file_refuses_missing_and_oversized_files(tmp_path, monkeypatch):
    import core.runs.archives

    with pytest.raises(LabError, match="does not exist"):
        import_run_file(tmp_path / "nothing.zip", tmp_path)
    big = tmp_path / "big.zip"
    big.write_bytes(b"\0" * 2000)
    monkeypatch.setattr(core.runs.archives, "MAX_RUN_BYTES", 1000)
    with pytest.raises(LabError, match="more than a run folder holds"):
        import_run_file(big, tmp_path)


def test_the_cli_imports_a_zip_into_its_runs_folder(transfer_zip, tmp_path, capsys):
    from core.cli import main

    archive = tmp_path / "run.zip"
    archive.write_bytes(transfer_zip)
    assert main(["import-run", str(archive), "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    [record] = list_runs(tmp_path / "runs").runs
    assert out[-1] == str(record.path)
    assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert record.run_id in capsys.readouterr().out
    archive.write_bytes(b"not a zip")
    assert main(["import-run", str(archive), "--runs-dir", str(tmp_path / "runs")]) == 1
    assert "not a zip" in capsys.readouterr().err


def test_the_experiments_page_imports_an_uploaded_run_and_shows_it(open_page, trained_runs, demo_backbone,
                                                                   tmp_path):
    """The upload goes through the web check, so the run's hub module lies in the Lab's cache folder here,
    as the Dataset page's generated demo module does."""
    import shutil

    from core.settings.paths import cache_dir

    backbone = cache_dir() / "import-test" / "backbone"
    if not backbone.exists():
        shutil.copytree(demo_backbone, backbone)
    data = export_run_zip(run_with_handle(trained_runs["mobilenet_v2"], backbone, tmp_path / "upload"))
    at = open_page("experiments", runs_dir=tmp_path / "runs")
    assert not at.exception
    [uploader] = [u for u in at.file_uploader if u.key == "run_import_zip"]
    uploader.set_value(("upload.zip", data, "application/zip")).run()
    at.button(key="run_import").click().run()
    assert not at.exception
    [record] = list_runs(tmp_path / "runs").runs
    assert any(record.run_id in s.value for s in at.success)
    assert record.run_id in run_picker(at).value
    # Its accuracy and loss curves (training and validation) are drawn beside the article's.
    names = [[trace.get("name") for trace in json.loads(chart.proto.spec)["data"]] for chart in at.get("plotly_chart")]
    assert names[:2] == [["Transfer (backbone)", "Transfer (backbone)", "Article: MobileNetV2 transfer"]] * 2


def test_the_experiments_page_shows_why_an_upload_was_refused(open_page, hand_zip, tmp_path):
    at = open_page("experiments", runs_dir=tmp_path / "runs")
    [uploader] = [u for u in at.file_uploader if u.key == "run_import_zip"]
    uploader.set_value(("run.zip", hand_zip, "application/zip")).run()
    at.button(key="run_import").click().run()
    assert not at.exception
    assert any("may not use" in e.value for e in at.error)
    assert left_behind(tmp_path / "runs") == []


# ------------------------------------------------------------------ portable runs: the backbone travels inside


@pytest.fixture(scope="module")
def portable(trained_runs, demo_backbone, tmp_path_factory) -> dict:
    """A transfer run trained on a local SavedModel that is gone by the time its zip is imported elsewhere."""
    import shutil

    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.training.experiment import run_experiment

    root = tmp_path_factory.mktemp("portable")
    backbone = root / "my-backbone"
    shutil.copytree(demo_backbone, backbone)
    source = open_run(trained_runs["mobilenet_v2"]).config["data"]["source"]
    run = run_experiment(DataConfig(source=source, image_size=64, batch_size=16, limit=40),
                         TrainConfig(model=ModelKind.TRANSFER, epochs=2, learning_rate=1e-2, handle=str(backbone)),
                         root / "runs")
    data = export_run_zip(run)
    shutil.rmtree(backbone)
    return {"run": run, "zip": data, "backbone": backbone}


def stored_handles(model_h5) -> list[str]:
    import h5py

    with h5py.File(model_h5, "r") as f:
        config = json.loads(f.attrs["model_config"])
    return [layer["config"]["handle"] for layer in config["config"]["layers"] if layer["class_name"] == "KerasLayer"]


def test_a_run_zip_carries_its_local_backbone_inside_the_run_folder(portable):
    run, names = portable["run"], set(entries_of(portable["zip"]))
    assert {f"{run.name}/backbone/saved_model.pb", f"{run.name}/backbone/variables/variables.index"} <= names
    assert stored_handles(run / "model.h5") == [str(portable["backbone"])]  # the run folder itself is unchanged
    with zipfile.ZipFile(io.BytesIO(portable["zip"])) as archive:
        assert archive.read(f"{run.name}/model.h5") != (run / "model.h5").read_bytes()


def test_a_portable_run_imports_predicts_and_evaluates_on_a_hosted_lab(portable, tmp_path, monkeypatch, demo_folder):
    from core.models.hub import web_upload_handle_allowed
    from core.runs.evaluate import evaluate_run, load_evaluation
    from core.runs.predict import load_for_prediction, predict_bytes

    monkeypatch.setenv("LAB_PRESET", "cloud")
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "hosted-runs"))
    imported = import_run_zip(portable["zip"], tmp_path / "hosted-runs", allowed_handle=web_upload_handle_allowed)
    assert imported.warnings == []
    assert stored_handles(imported.path / "model.h5") == ["./backbone"]
    images = [(p.name, p.read_bytes()) for p in sorted((demo_folder / "squares").glob("*.jpg"))[:3]]
    predictions = predict_bytes(load_for_prediction(imported.path), images)
    assert all(set(p.probabilities) == {"circles", "squares"} for p in predictions)
    before = load_evaluation(imported.path)  # the evaluation it came with is shown as it is
    assert before.images > 0
    # Evaluating it again would open the folder its config names, a server path: the hosted preset refuses
    # that as it refuses a visitor typing it; on the local preset the same run evaluates to the same matrix.
    with pytest.raises(LabError, match="^The cloud preset does not read folders on the server"):
        evaluate_run(imported.path)
    monkeypatch.setenv("LAB_PRESET", "local")
    assert evaluate_run(imported.path).matrix == before.matrix
    # Moved elsewhere (another runs folder, renamed), the run still finds its backbone beside its model.
    moved = tmp_path / "moved" / "renamed-run"
    moved.parent.mkdir()
    imported.path.rename(moved)
    assert [p.label for p in predict_bytes(load_for_prediction(moved), images)] == [p.label for p in predictions]


def test_a_backbone_that_reads_files_is_refused(portable, tmp_path):
    import tensorflow as tf

    class Snoop(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 64, 64, 3], tf.float32)])
        def __call__(self, x):
            secret = tf.strings.length(tf.io.read_file("/etc/hostname"))
            return tf.reduce_mean(x, axis=[1, 2]) + tf.cast(secret, tf.float32) * 0.0

    tf.saved_model.save(Snoop(), str(tmp_path / "snoop"))
    run = portable["run"].name
    entries = {name: data for name, data in entries_of(portable["zip"]).items() if "/backbone/" not in name}
    entries |= {f"{run}/backbone/{p.relative_to(tmp_path / 'snoop').as_posix()}": p.read_bytes()
                for p in (tmp_path / "snoop").rglob("*") if p.is_file()}
    with pytest.raises(ModelFileError, match="contains a ReadFile operation"):
        import_run_zip(make_zip(entries), tmp_path / "runs")
    assert left_behind(tmp_path / "runs") == []


def test_a_relative_handle_may_not_leave_the_run_folder(portable, tmp_path):
    from core.safety.model_files import inspect_model_file, rewrite_hub_handles

    rewrite_hub_handles(portable["run"] / "model.h5", tmp_path / "model.h5",
                        {str(portable["backbone"]): "./../../etc/backbone"})
    with pytest.raises(ModelFileError, match="leaves the model's own folder"):
        inspect_model_file(tmp_path / "model.h5")


def test_a_hosted_lab_imports_a_portable_run_from_the_page_and_predicts_with_it(open_page, portable, monkeypatch,
                                                                               demo_folder, tmp_path):
    monkeypatch.setenv("LAB_PRESET", "cloud")
    at = open_page("experiments", runs_dir=tmp_path / "runs")
    [uploader] = [u for u in at.file_uploader if u.key == "run_import_zip"]
    uploader.set_value(("portable.zip", portable["zip"], "application/zip")).run()
    at.button(key="run_import").click().run()
    assert not at.exception
    [record] = list_runs(tmp_path / "runs").runs
    assert any(record.run_id in s.value for s in at.success)
    at.switch_page("app_pages/predict.py").run()
    assert not at.exception and not at.error
    assert at.selectbox[0].value == record.run_id
    image = min((demo_folder / "circles").glob("*.jpg"))
    at.file_uploader(key="up_images").set_value([(image.name, image.read_bytes(), "image/jpeg")]).run()
    assert not at.exception and not at.error
    assert [m.value for m in at.markdown if m.value.startswith("### ")] in (["### circles"], ["### squares"])


def test_the_cli_imports_a_portable_run_and_predicts_with_it(portable, tmp_path, demo_folder):
    import subprocess
    import sys

    def lab(*args):
        return subprocess.run([sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[3], timeout=300, check=False)

    archive = tmp_path / "portable.zip"
    archive.write_bytes(portable["zip"])
    proc = lab("import-run", archive, "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    image = min((demo_folder / "circles").glob("*.jpg"))
    proc = lab("predict", "--model", proc.stdout.strip(), image)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"{image}: ") and "circles 0." in proc.stdout
