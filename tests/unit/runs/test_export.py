"""Exports: every format loads and predicts what the Keras model predicts, within its stated tolerance."""
from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.runs.export import (
    FORMATS,
    LABELS_FILE,
    ExportFormat,
    export_download,
    export_run,
    labels_path,
    parse_format,
)
from core.settings.errors import LabError
from tests.conftest import TEST_IMAGE_SIZE
from tests.lab_helpers import keras_probabilities, predict_with_export

KINDS = ["baseline", "mobilenet_v2"]


@pytest.fixture(scope="module")
def run_copies(trained_runs, tmp_path_factory) -> dict[str, Path]:
    """Copies of the shared runs: exports are written into a run's folder by default."""
    root = tmp_path_factory.mktemp("exported")
    return {kind: Path(shutil.copytree(trained_runs[kind], root / trained_runs[kind].name)) for kind in KINDS}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Preprocessed generated images: both demo classes and plain noise, at the runs' input size."""
    from core.data.demo import demo_image
    from core.data.sources import preprocess

    rng = np.random.default_rng(11)
    decoded = [np.asarray(demo_image(name, rng, (80, 80))) for name in ("circles", "squares") * 4]
    decoded += [rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8) for _ in range(2)]
    return np.stack([np.asarray(preprocess(img, TEST_IMAGE_SIZE)) for img in decoded]).astype(np.float32)


@pytest.fixture(scope="module")
def reference(run_copies, images) -> dict[str, np.ndarray]:
    from core.safety.model_files import load_model

    out = {}
    for kind in KINDS:
        model, info = load_model(run_copies[kind] / "model.h5")
        out[kind] = keras_probabilities(model, info.softmax_output, images)
    return out


@pytest.mark.parametrize("fmt", list(ExportFormat))
@pytest.mark.parametrize("kind", KINDS)
def test_every_export_loads_and_agrees_with_the_keras_model(run_copies, images, reference, kind, fmt):
    result = export_run(run_copies[kind], fmt)
    assert result.path.exists() and result.size_bytes > 0
    assert result.path.parent == run_copies[kind] / "exports"
    probs = predict_with_export(result.path, fmt, images)
    assert probs.shape == reference[kind].shape
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    if fmt is ExportFormat.H5:
        assert result.path.read_bytes() == (run_copies[kind] / "model.h5").read_bytes()
        np.testing.assert_array_equal(probs, reference[kind])
    elif fmt is ExportFormat.TFLITE_INT8:
        np.testing.assert_array_equal(probs.argmax(axis=1), reference[kind].argmax(axis=1))
        assert np.abs(probs - reference[kind]).max() <= FORMATS[fmt].tolerance
    else:
        assert np.abs(probs - reference[kind]).max() <= FORMATS[fmt].tolerance
    if fmt in (ExportFormat.TFLITE, ExportFormat.TFLITE_INT8):
        assert labels_path(result.path).read_text().split() == ["circles", "squares"]


def test_int8_is_smaller_than_float32(run_copies):
    sizes = {fmt: export_run(run_copies["baseline"], fmt).size_bytes
             for fmt in (ExportFormat.TFLITE, ExportFormat.TFLITE_INT8)}
    assert sizes[ExportFormat.TFLITE_INT8] < 0.4 * sizes[ExportFormat.TFLITE]


def test_savedmodel_signature_takes_images_and_returns_probabilities(run_copies, images):
    import tensorflow as tf

    folder = export_run(run_copies["mobilenet_v2"], "savedmodel").path
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["images"]
    assert list(serve.structured_outputs) == ["probabilities"]
    assert serve.structured_input_signature[1]["images"].shape.as_list() == [None, TEST_IMAGE_SIZE,
                                                                             TEST_IMAGE_SIZE, 3]
    assert (folder / "assets" / LABELS_FILE).read_text().split() == ["circles", "squares"]


def test_exporting_again_replaces_the_previous_export(run_copies):
    first = export_run(run_copies["mobilenet_v2"], "savedmodel")
    (first.path / "stale-marker").write_text("from an earlier export")
    second = export_run(run_copies["mobilenet_v2"], "savedmodel")
    assert second.path == first.path and (second.path / "saved_model.pb").is_file()
    assert not (second.path / "stale-marker").exists()
    assert not [p for p in second.path.parent.iterdir() if p.name.startswith(".")]


def test_downloads_are_single_files(run_copies, images, reference, tmp_path):
    run = run_copies["mobilenet_v2"]
    h5 = export_download(run, "h5")
    assert h5.filename.endswith(".h5") and h5.data == (run / "model.h5").read_bytes()

    saved = export_download(run, "savedmodel")
    assert saved.filename.endswith("_savedmodel.zip") and saved.mime == "application/zip"
    with zipfile.ZipFile(io.BytesIO(saved.data)) as zf:
        names = zf.namelist()
    assert any(n.endswith("/saved_model.pb") for n in names)
    assert any(n.endswith("/assets/labels.txt") for n in names)
    (tmp_path / saved.filename).write_bytes(saved.data)
    probs = predict_with_export(tmp_path / saved.filename, "savedmodel", images)
    assert np.abs(probs - reference["mobilenet_v2"]).max() <= FORMATS[ExportFormat.SAVEDMODEL].tolerance

    lite = export_download(run, "tflite-int8")
    with zipfile.ZipFile(io.BytesIO(lite.data)) as zf:
        assert sorted(zf.namelist()) == sorted([lite.filename.removesuffix(".zip"), LABELS_FILE])
        assert zf.read(LABELS_FILE).decode().split() == ["circles", "squares"]


def test_hub_model_exports_do_not_need_the_hub_module(tmp_path, demo_folder, demo_backbone, images):
    """The SavedModel and TFLite files carry the backbone: they still work once its folder is gone."""
    from core.runs.predict import load_for_prediction
    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.training.experiment import run_experiment

    backbone = Path(shutil.copytree(demo_backbone, tmp_path / "backbone"))
    data = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=16, limit=32)
    run = run_experiment(data, TrainConfig(model=ModelKind.TRANSFER, epochs=1, handle=str(backbone)),
                         tmp_path / "runs")
    loaded = load_for_prediction(run)
    expected = keras_probabilities(loaded.model, loaded.softmax_output, images)
    saved = export_run(run, "savedmodel").path
    lite = export_run(run, "tflite").path
    shutil.rmtree(backbone)
    assert np.abs(predict_with_export(saved, "savedmodel", images) - expected).max() <= 1e-5
    assert np.abs(predict_with_export(lite, "tflite", images) - expected).max() <= 1e-4


def test_cli_export_writes_where_asked(run_copies, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "phone" / "model.tflite"
    assert main(["export", str(run_copies["mobilenet_v2"]), "--format", "tflite", "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "phone" / "model.labels.txt").is_file()
    assert capsys.readouterr().out.strip().endswith(str(out))

    zipped = tmp_path / "serving.zip"
    assert main(["export", str(run_copies["mobilenet_v2"]), "--format", "savedmodel", "--out", str(zipped)]) == 0
    assert zipfile.is_zipfile(zipped)


def test_cli_export_never_mixes_a_savedmodel_with_existing_files(run_copies, tmp_path, capsys):
    from core.cli import main

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    rc = main(["export", str(run_copies["baseline"]), "--format", "savedmodel", "--out", str(tmp_path / "taken")])
    assert rc == 1 and "existing folder" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    (tmp_path / "notes.txt").write_text("mine")
    rc = main(["export", str(run_copies["baseline"]), "--format", "savedmodel", "--out", str(tmp_path / "notes.txt")])
    assert rc == 1 and "ending in .zip" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unknown_formats_and_missing_runs_are_reported(tmp_path):
    with pytest.raises(LabError, match="tflite-int8"):
        parse_format("onnx")
    with pytest.raises(LabError, match="does not exist"):
        export_run(tmp_path / "no-such-run", "h5")
    with pytest.raises(SystemExit):
        from core.cli import main

        main(["export", str(tmp_path), "--format", "onnx"])


def test_tflite_files_are_checked_when_written_with_litert_where_it_is_installed(run_copies, tmp_path, monkeypatch):
    import importlib.util
    import sys

    from core.runs.export import LITERT, TF_LITE

    expected = LITERT if importlib.util.find_spec("ai_edge_litert") else TF_LITE
    result = export_run(run_copies["baseline"], "tflite", tmp_path / "a.tflite")
    assert result.check.startswith(f"checked with {expected}: on 4 test images its probabilities are within ")
    for module in ("ai_edge_litert", "ai_edge_litert.interpreter"):  # as where it does not install
        monkeypatch.setitem(sys.modules, module, None)
    result = export_run(run_copies["baseline"], "tflite-int8", tmp_path / "b.tflite")
    assert result.check.startswith(f"checked with {TF_LITE}: ")


def test_a_tflite_file_that_disagrees_with_its_model_is_not_written(run_copies, tmp_path, monkeypatch):
    import dataclasses

    import core.runs.export

    strict = {**FORMATS, ExportFormat.TFLITE_INT8: dataclasses.replace(FORMATS[ExportFormat.TFLITE_INT8],
                                                                        tolerance=0.0)}
    monkeypatch.setattr(core.runs.export, "FORMATS", strict)
    with pytest.raises(LabError, match="disagrees with the model by up to"):
        export_run(run_copies["mobilenet_v2"], "tflite-int8", tmp_path / "c.tflite")
    assert list(tmp_path.iterdir()) == []


def test_float16_is_about_half_the_size_of_float32_and_agrees_closely(run_copies, images, reference):
    sizes = {}
    for kind in KINDS:
        float32 = export_run(run_copies[kind], "tflite").size_bytes
        result = export_run(run_copies[kind], "tflite-fp16")
        assert result.path.name.endswith("_fp16.tflite") and result.check.startswith("checked with ")
        assert labels_path(result.path).read_text().split() == ["circles", "squares"]
        probs = predict_with_export(result.path, "tflite-fp16", images)
        np.testing.assert_array_equal(probs.argmax(axis=1), reference[kind].argmax(axis=1))
        assert np.abs(probs - reference[kind]).max() <= FORMATS[ExportFormat.TFLITE_FP16].tolerance == 0.01
        sizes[kind] = result.size_bytes / float32
    assert sizes["baseline"] < 0.6  # a graph of a few large weights halves; the tiny hub model less so
    assert parse_format("tflite-fp16") is ExportFormat.TFLITE_FP16


def test_the_savedmodel_holds_its_signature_and_variables_not_every_keras_layer(run_copies):
    """Holding the Keras model would save a traced function per layer: slower to write, read and convert."""
    import tensorflow as tf

    folder = export_run(run_copies["baseline"], "savedmodel").path
    loaded = tf.saved_model.load(str(folder))
    assert not hasattr(loaded, "model")
    assert len(loaded.model_variables) == len(load_model_variables(run_copies["baseline"]))


def load_model_variables(run: Path) -> list:
    from core.safety.model_files import load_model

    return load_model(run / "model.h5")[0].variables


def strict(monkeypatch, fmt: ExportFormat, tolerance: float = 0.0) -> None:
    """Make `fmt`'s agreement check refuse everything, as it refuses a model that rounding moves too far."""
    import dataclasses

    import core.runs.export

    monkeypatch.setattr(core.runs.export, "FORMATS",
                        {**FORMATS, fmt: dataclasses.replace(FORMATS[fmt], tolerance=tolerance)})


def test_a_refused_int8_file_says_why_in_plain_words_and_offers_float16(run_copies, tmp_path, monkeypatch):
    from core.runs.export import ExportRefused

    strict(monkeypatch, ExportFormat.TFLITE_INT8)
    with pytest.raises(ExportRefused) as refused:
        export_run(run_copies["mobilenet_v2"], "tflite-int8", tmp_path / "c.tflite")
    message = str(refused.value)
    assert "\n" not in message
    assert f"disagrees with the model by up to {refused.value.diff:.3g} when run with " in message
    assert "more than the 0 allowed, so it was not written: int8 rounds every weight" in message
    assert "one of 256 levels" in message
    assert "TFLite float16 (tflite-fp16) keeps every activation unrounded" in message
    assert message.endswith("export that instead.")
    assert refused.value.alternative is ExportFormat.TFLITE_FP16


def test_a_refusal_is_remembered_until_the_tolerance_or_converter_changes(run_copies, tmp_path, monkeypatch):
    import shutil as sh

    import core.runs.export
    from core.runs.export import ExportRefused, download_info, prepare_download

    run = Path(sh.copytree(run_copies["baseline"], tmp_path / "run"))
    sh.rmtree(run / "exports", ignore_errors=True)
    strict(monkeypatch, ExportFormat.TFLITE_INT8)
    with pytest.raises(ExportRefused):
        prepare_download(run, "tflite-int8")
    info = download_info(run, "tflite-int8")
    assert not info.ready and isinstance(info.refused, ExportRefused)
    assert info.refused.alternative is ExportFormat.TFLITE_FP16

    def never(*args, **kwargs):
        raise AssertionError("converted again")

    with monkeypatch.context() as m:  # asked again, it answers at once: the same model converts the same way
        m.setattr(core.runs.export, "_tflite_bytes", never)
        with pytest.raises(ExportRefused, match="one of 256 levels"):
            prepare_download(run, "tflite-int8")
    strict(monkeypatch, ExportFormat.TFLITE_INT8, tolerance=0.05)  # the shipped tolerance: no longer refused
    assert download_info(run, "tflite-int8").refused is None
    prepare_download(run, "tflite-int8")
    assert download_info(run, "tflite-int8").ready
    assert not list((run / "exports").glob("*.refused.json"))


def test_the_time_an_export_takes_is_estimated_before_it_starts(run_copies, monkeypatch):
    import os

    from core.runs.export import export_estimate

    assert export_estimate(run_copies["baseline"], "h5") is None  # a copy
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    idle = export_estimate(run_copies["mobilenet_v2"], "tflite-int8")
    assert not idle.busy and idle.seconds == idle.idle_seconds and 1 < idle.seconds < 60
    assert idle.describe().startswith("about ")
    monkeypatch.setattr(os, "getloadavg", lambda: (24.0, 20.0, 10.0))
    busy = export_estimate(run_copies["mobilenet_v2"], "tflite-int8")
    assert busy.busy and busy.seconds == pytest.approx(12 * idle.seconds)
    assert "load 24 on 2 cores" in busy.describe()


def test_cli_export_says_how_long_it_will_take_before_converting(run_copies, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "model_fp16.tflite"
    assert main(["export", str(run_copies["baseline"]), "--format", "tflite-fp16", "--out", str(out)]) == 0
    first, *_ = capsys.readouterr().out.splitlines()
    assert first.startswith("Converting to TFLite float16: about ") and out.is_file()
