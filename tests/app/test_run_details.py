"""The dashboard side of evaluation, fine-tuning, augmentation, explanation heatmaps and exports."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import zipfile

import numpy as np
import pytest
from lab_helpers import TEST_IMAGE_SIZE, wait_for_job


@pytest.fixture
def runs_copy(trained_runs, tmp_path):
    """The trained runs in a folder of this test's own, free to change."""
    runs = tmp_path / "runs-copy"
    shutil.copytree(trained_runs["dir"], runs)
    return {kind: runs / trained_runs[kind].name for kind in ("baseline", "mobilenet_v2")} | {"dir": runs}


@pytest.fixture
def folder_state(demo_folder, demo_backbone) -> dict:
    return {"lab_source": f"folder:{demo_folder}", "lab_handle": str(demo_backbone), "exp_image_size": TEST_IMAGE_SIZE,
            "exp_b_batch": 16, "exp_t_batch": 16}


def chart_by_key(at, key: str) -> dict:
    found = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if key in c.proto.id]
    assert len(found) == 1, f"{len(found)} charts with key {key}"
    return found[0]


def array(value) -> np.ndarray:
    """A figure's numbers: plotly writes numpy arrays as base64 typed arrays, other sequences as lists."""
    if isinstance(value, dict) and "bdata" in value:
        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return data.reshape([int(n) for n in str(value.get("shape", len(data))).split(",")])
    return np.asarray(value, dtype=float)


def stored_evaluation(run_dir) -> dict:
    return json.loads((run_dir / "evaluation.json").read_text())


def test_each_run_shows_its_confusion_matrix_per_class_table_and_mistakes(open_page, runs_copy, folder_state):
    at = open_page("experiments", runs_dir=runs_copy["dir"], state=folder_state)
    assert not at.exception and not at.error
    for kind in ("baseline", "mobilenet_v2"):
        run = runs_copy[kind]
        saved = stored_evaluation(run)
        spec = chart_by_key(at, f"confusion_{run.name}")
        heatmap = spec["data"][0]
        assert heatmap["type"] == "heatmap"
        assert heatmap["x"] == heatmap["y"] == ["circles", "squares"]
        assert [[cell.split("<br>")[0] for cell in row] for row in heatmap["text"]] == \
            [[str(n) for n in row] for row in saved["matrix"]]
        assert spec["layout"]["yaxis"]["title"]["text"] == "true class"
        tables = [t.value for t in at.table if "Recall" in t.value.columns]
        recalls = [f"{m['recall']:.1%}" for m in saved["per_class"]]
        assert any(list(t["Recall"]) == recalls and list(t["Class"]) == ["circles", "squares"] for t in tables)
    # The gallery shows every stored mistake with its labels; the runs' mistakes are the demo data's own.
    wrong = sum(len(stored_evaluation(runs_copy[k])["wrong"]) for k in ("baseline", "mobilenet_v2"))
    gallery = [c.value for c in at.caption if c.value.startswith("true **")]
    assert len(gallery) == wrong
    assert len(at.table) == 3 and len(at.dataframe) == 2  # comparison, two per-class tables; two layer tables


def test_a_run_without_an_evaluation_can_be_evaluated_from_the_page(open_page, runs_copy, folder_state):
    run = runs_copy["baseline"]
    expected = stored_evaluation(run)
    (run / "evaluation.json").unlink()
    shutil.rmtree(run / "evaluation")
    at = open_page("experiments", runs_dir=runs_copy["dir"], state=folder_state)
    assert not at.exception
    assert not [c for c in at.get("plotly_chart") if f"confusion_{run.name}" in c.proto.id]
    assert any("has no evaluation" in c.value for c in at.caption)
    at.button(key=f"evaluate_{run.name}").click().run()
    assert not at.exception and not at.error
    assert stored_evaluation(run)["matrix"] == expected["matrix"]  # same model, same validation split
    assert chart_by_key(at, f"confusion_{run.name}")["data"][0]["type"] == "heatmap"
    at.run()  # read back from the run folder, without the button
    assert chart_by_key(at, f"confusion_{run.name}")["data"][0]["type"] == "heatmap"
    assert not [b for b in at.button if b.key == f"evaluate_{run.name}"]


def test_fine_tuning_and_augmentation_settings_reach_the_runs(open_page, folder_state, tmp_path):
    state = dict(folder_state, exp_b_epochs=1, exp_t_epochs=1, exp_b_limit=32, exp_t_limit=32, exp_t_lr=0.01,
                 exp_b_augment=True, exp_t_augment=True, exp_t_ft_epochs=1, exp_t_ft_lr=0.001)
    at = open_page("experiments", state=state)
    assert not at.exception and not at.error
    assert any(c.value.startswith(":material/info: Feature cache off while augmenting") for c in at.caption)
    transfer_details = [c.value for c in at.caption if "validation images" in c.value][1]
    assert "fine-tuning" in transfer_details and "features" not in transfer_details  # uncached, then fine-tuned
    at.button(key="run_both").click().run()
    snap = wait_for_job(at)
    assert snap.phase == "done", snap.message
    assert not at.exception
    transfer_run, baseline_run = snap.run_dirs  # Run both trains the transfer model first
    baseline_config = json.loads((baseline_run / "config.json").read_text())
    assert baseline_config["data"]["augment"] is True and baseline_config["train"]["fine_tune_epochs"] == 0
    config = json.loads((transfer_run / "config.json").read_text())
    assert config["data"]["augment"] is True and config["feature_cache_used"] is False
    assert config["train"]["fine_tune_epochs"] == 1
    assert config["train"]["fine_tune_learning_rate"] == pytest.approx(0.001)
    history = json.loads((transfer_run / "history.json").read_text())
    assert [row["phase"] for row in history] == ["frozen", "fine-tune"]
    accuracy = chart_by_key(at, "results_acc")
    boundary = [s for s in accuracy["layout"]["shapes"] if s.get("type") == "line" and s["x0"] == s["x1"]]
    assert [s["x0"] for s in boundary] == [1.5] and boundary[0]["line"]["dash"] == "dash"
    assert "fine-tuning starts" in [a["text"] for a in accuracy["layout"]["annotations"]]


def test_article_settings_turn_augmentation_and_fine_tuning_off(open_page):
    at = open_page("experiments", state={"exp_t_augment": True, "exp_b_augment": True, "exp_t_ft_epochs": 3})
    next(b for b in at.button if b.label == "Article settings").click().run()
    s = at.session_state
    assert (s["exp_b_augment"], s["exp_t_augment"], s["exp_t_ft_epochs"]) == (False, False, 0)
    assert at.toggle(key="exp_t_augment").value is False


@pytest.fixture(scope="module")
def circle(demo_folder) -> tuple[str, bytes]:
    path = min((demo_folder / "circles").iterdir())
    return path.name, path.read_bytes()


def test_explain_draws_a_heatmap_over_the_image_for_either_model(open_page, trained_runs, circle):
    at = open_page("predict", runs_dir=trained_runs["dir"])
    at.file_uploader[0].set_value([(circle[0], circle[1], "image/jpeg")]).run()
    assert not at.exception and not at.error
    # The transfer model's convolutions sit inside the hub module: occlusion is its only method.
    assert any(c.value == "Explanation: Occlusion sensitivity" for c in at.caption)
    assert not [c for c in at.get("plotly_chart") if "explanation_0" in c.proto.id]
    at.button(key="explain_0").click().run()
    assert not at.exception and not at.error
    spec = chart_by_key(at, "explanation_0")
    assert [t["type"] for t in spec["data"]] == ["image", "heatmap"]
    assert spec["data"][1]["colorbar"]["title"]["text"] == "importance"
    assert spec["layout"]["title"]["text"].startswith("Occlusion sensitivity for ")
    assert any(c.value.startswith("Red: hiding this part") for c in at.caption)

    at.selectbox(key="pred_run").set_value(trained_runs["baseline"].name).run()
    at.radio(key="pred_method_0").set_value("gradcam").run()
    assert not [c for c in at.get("plotly_chart") if "explanation_0" in c.proto.id]  # another model: ask again
    at.button(key="explain_0").click().run()
    assert not at.exception and not at.error
    spec = chart_by_key(at, "explanation_0")
    assert spec["layout"]["title"]["text"].startswith("Grad-CAM for ")
    heat = array(spec["data"][1]["z"])
    assert heat.shape == (80, 80)  # the uploaded image's own size
    assert 0 <= heat.min() and 0.5 < heat.max() <= 1


@pytest.fixture
def downloads(monkeypatch) -> dict:
    """key -> (data, file name): what the page hands each download button."""
    from streamlit.delta_generator import DeltaGenerator

    handed = {}
    original = DeltaGenerator.download_button

    def spy(self, label, data, *args, **kwargs):
        handed[kwargs["key"]] = (data, kwargs["file_name"])
        return original(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", spy)
    return handed


def test_export_downloads_are_made_on_request_and_load(open_page, runs_copy, folder_state, downloads, tmp_path):
    from core.safety.model_files import load_model
    from tests.lab_helpers import keras_probabilities, predict_with_export

    run = runs_copy["baseline"]
    at = open_page("experiments", runs_dir=runs_copy["dir"], state=folder_state)
    assert not at.exception and not at.error
    # The .h5 is the run's own file; every other format waits for its Prepare button.
    assert f"download_h5_{run.name}" in downloads and f"download_tflite_{run.name}" not in downloads
    assert not (run / "exports").exists()
    data, name = downloads[f"download_h5_{run.name}"]
    assert callable(data) and name == f"{run.name}.h5"
    (tmp_path / name).write_bytes(data())
    images = np.random.default_rng(0).random((3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3), dtype=np.float32)
    model, info = load_model(run / "model.h5")
    reference = keras_probabilities(model, info.softmax_output, images)
    assert np.array_equal(predict_with_export(tmp_path / name, "h5", images), reference)

    at.button(key=f"prepare_tflite_{run.name}").click().run()
    assert not at.exception and not at.error
    data, name = downloads[f"download_tflite_{run.name}"]
    assert name == f"{run.name}.tflite.zip"
    with zipfile.ZipFile(io.BytesIO(data())) as zf:
        zf.extractall(tmp_path / "lite")
    assert (tmp_path / "lite" / "labels.txt").read_text().split() == ["circles", "squares"]
    probs = predict_with_export(tmp_path / "lite" / f"{run.name}.tflite", "tflite", images)
    assert np.abs(probs - reference).max() <= 1e-4
    at.run()  # prepared once, offered directly from then on
    assert not [b for b in at.button if b.key == f"prepare_tflite_{run.name}"]


def test_a_run_folder_zip_from_the_page_imports_into_another_installation(open_page, runs_copy, folder_state,
                                                                         downloads, tmp_path):
    from core.runs.archives import import_run_zip
    from core.runs.folders import list_runs

    run = runs_copy["mobilenet_v2"]
    at = open_page("experiments", runs_dir=runs_copy["dir"], state=folder_state)
    assert not at.exception and not at.error
    data, name = downloads[f"download_run_{run.name}"]
    assert name == f"{run.name}.zip"
    elsewhere = tmp_path / "other-installation"
    imported = import_run_zip(data(), elsewhere)
    (record,) = list_runs(elsewhere).runs
    assert record.path == imported.path and record.history == json.loads((run / "history.json").read_text())


def run_sections(run_dir: str) -> None:
    """What the run's page shows for one run: the reload check, then its evaluation."""
    from app_pages.parts.run_details import show_evaluation, show_reload_check
    from core.runs.folders import open_run

    record = open_run(run_dir)
    show_reload_check(record)
    show_evaluation(record)


def open_sections(run_dir):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_function(run_sections, args=(str(run_dir),), default_timeout=120).run()


def test_a_run_shows_the_articles_reload_check_beside_its_line_of_code(runs_copy):
    run = runs_copy["mobilenet_v2"]
    check = json.loads((run / "metrics.json").read_text())["reload_check"]
    at = open_sections(run)
    assert not at.exception and not at.error
    from core.runs.reload_check import RELOAD_CODE

    assert RELOAD_CODE == 'tf_keras.models.load_model(path, custom_objects={"KerasLayer": hub.KerasLayer})'
    assert [c.value for c in at.code] == [RELOAD_CODE]
    [caption] = [c.value for c in at.caption if "reloaded in" in c.value]
    assert caption.startswith(":material/check_circle: model.h5 reloaded in ")
    assert f"on {check['images']} validation images" in caption and "exactly 0.0" in caption


def test_runs_without_a_reload_check_or_with_a_failed_one_say_so_as_plain_text(runs_copy):
    run = runs_copy["baseline"]
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["reload_check"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    at = open_sections(run)
    assert any("No reload check recorded" in c.value for c in at.caption)
    metrics["reload_check"] = {"error": "<img src=x onerror=alert(1)> [x](javascript:alert(1))"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    at = open_sections(run)
    assert not at.exception
    shown = "The reload check could not run: <img src=x onerror=alert(1)> [x](javascript:alert(1))"
    assert [t.value for t in at.text] == [shown]


def test_the_per_class_table_has_f1_and_the_macro_averages_follow_it(runs_copy):
    run = runs_copy["baseline"]
    saved = stored_evaluation(run)
    at = open_sections(run)
    [table] = [t.value for t in at.table]
    assert list(table.columns) == ["Class", "Precision", "Recall", "F1", "Images", "Predicted"]
    assert list(table["F1"]) == [f"{m['f1']:.1%}" for m in saved["per_class"]]
    from core.runs.evaluate import load_evaluation

    macro = load_evaluation(run).macro
    assert any(m.value == f"**Macro average** (every class counts once, whatever its size): precision "
                          f"{macro.precision:.1%} · recall {macro.recall:.1%} · F1 {macro.f1:.1%}" for m in at.markdown)


def test_a_tflite_download_is_labelled_with_what_it_downloads(open_page, runs_copy, folder_state, downloads):
    from core.settings.text import megabytes

    run = runs_copy["baseline"]
    at = open_page("experiments", runs_dir=runs_copy["dir"], state=folder_state)
    at.button(key=f"prepare_tflite-int8_{run.name}").click().run()
    assert not at.exception and not at.error
    data, name = downloads[f"download_tflite-int8_{run.name}"]
    [button] = [b for b in at.get("download_button") if f"download_tflite-int8_{run.name}" in b.proto.id]
    assert name.endswith(".zip")
    assert button.proto.label == f"TFLite int8 · .zip · {megabytes(len(data()))}"
    [h5] = [b for b in at.get("download_button") if f"download_h5_{run.name}" in b.proto.id]
    assert h5.proto.label == f"Keras .h5 · {megabytes((run / 'model.h5').stat().st_size)}"


def test_the_reload_line_wraps_and_the_per_class_table_keeps_to_six_short_columns(runs_copy):
    """Two runs side by side on a desktop page leave each about 460 px: a scrolled code line or a seventh
    column is cut off there."""
    at = open_sections(runs_copy["mobilenet_v2"])
    [code] = at.code
    assert code.proto.wrap_lines
    [table] = [t.value for t in at.table]
    assert len(table.columns) == 6 and max(len(c) for c in table.columns) <= len("Precision")


def test_int8_says_what_it_costs_up_front_and_a_refusal_offers_float16(open_page, runs_copy, folder_state, downloads,
                                                                       monkeypatch):
    import dataclasses

    import core.runs.export
    from core.runs.export import FORMATS, ExportFormat

    run = runs_copy["mobilenet_v2"]
    at = open_page("experiments", runs_dir=runs_copy["dir"], state=folder_state)
    assert not at.exception and not at.error
    prepare = at.button(key=f"prepare_tflite-int8_{run.name}")
    assert re.fullmatch(r"TFLite int8 · ~\d+ (s|min)", prepare.label)  # short enough not to be cut off
    assert "Converting takes about " in prepare.help
    # A model that int8's rounding moves further than allowed: with no difference allowed, any model.
    int8 = ExportFormat.TFLITE_INT8
    monkeypatch.setattr(core.runs.export, "FORMATS", {**FORMATS, int8: dataclasses.replace(FORMATS[int8], tolerance=0)})
    prepare.click().run()
    assert not at.exception and not at.error
    [warning] = [w.value for w in at.warning if "TFLite int8" in w.value]
    assert "disagrees with the model by up to" in warning and "one of 256 levels" in warning
    assert "TFLite float16 \\(tflite-fp16\\) keeps every activation unrounded" in warning
    assert at.button(key=f"refused_tflite-int8_{run.name}").disabled
    assert f"download_tflite-int8_{run.name}" not in downloads

    at.button(key=f"instead_tflite-fp16_{run.name}").click().run()
    assert not at.exception and not at.error
    data, name = downloads[f"download_tflite-fp16_{run.name}"]
    assert name == f"{run.name}_fp16.tflite.zip" and zipfile.is_zipfile(io.BytesIO(data()))

    def never(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(core.runs.export, "_tflite_bytes", never)
    at.run()  # the refusal is remembered: said at once, nothing converted again
    assert not at.exception and not at.error
    assert at.button(key=f"refused_tflite-int8_{run.name}").disabled
    assert any("one of 256 levels" in w.value for w in at.warning)
    assert any(c.value == "TFLite float16 is ready above." for c in at.caption)



def test_sessions_showing_the_same_finished_runs_share_their_figures(trained_runs, monkeypatch):
    import streamlit as st

    from app_pages.parts import results, run_details
    from core.runs.evaluate import load_evaluation
    from core.runs.folders import open_run

    drawn = []

    class Column:
        def plotly_chart(self, figure, **_):
            drawn.append(figure)

    monkeypatch.setattr(st, "columns", lambda spec, **_: [Column() for _ in range(spec)])
    records = [open_run(trained_runs["baseline"]), open_run(trained_runs["mobilenet_v2"])]
    for _ in range(2):  # two sessions (or one session's reruns) showing the same runs
        results.show_curves(records)
    assert len(drawn) == 4 and drawn[0] is drawn[2] and drawn[1] is drawn[3]
    assert {records[0].model_name, records[1].model_name} <= {t.name for t in drawn[0].data}
    drawn.clear()
    results.show_curves(records[:1])  # another selection: figures of its own
    assert len(drawn) == 2 and records[1].model_name not in {t.name for t in drawn[0].data}

    version = run_details._evaluation_version(records[1])
    evaluation = load_evaluation(records[1].path)
    assert version is not None and evaluation is not None
    first = run_details._confusion_figure(str(records[1].path), version, evaluation)
    assert run_details._confusion_figure(str(records[1].path), version, evaluation) is first
