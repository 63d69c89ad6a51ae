"""Saving and reloading .h5 models: an exact round trip, and files that must be refused before loading."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_files import edit_config, lambda_model_file, with_handle

from core.safety.model_files import inspect_model_file, load_model, save_model
from core.settings.config import DataConfig, ModelKind, TrainConfig
from core.settings.errors import ModelFileError

ARTICLE_URL = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"


@pytest.fixture(scope="module")
def fitted(demo_folder, demo_backbone):
    """Both models after a short fit on the demo folder, in memory, with a batch of validation images."""
    from core.data.sources import VALIDATION, make_pipeline, open_source
    from core.training.experiment import fit

    data = DataConfig(source=f"folder:{demo_folder}", image_size=48, batch_size=16, limit=48)
    source = open_source(data)
    x, _ = next(iter(make_pipeline(source, VALIDATION, data, training=False)))
    out = {"x": x.numpy(), "class_names": source.info.class_names}
    for kind, lr in ((ModelKind.BASELINE, 1e-3), (ModelKind.TRANSFER, 1e-2)):
        out[kind] = fit(source, data, TrainConfig(model=kind, epochs=1, learning_rate=lr,
                                                  handle=str(demo_backbone))).model
    return out


@pytest.mark.parametrize("kind", [ModelKind.BASELINE, ModelKind.TRANSFER])
def test_h5_round_trip_is_exact(fitted, kind, tmp_path):
    model, x = fitted[kind], fitted["x"]
    path = tmp_path / "model.h5"
    save_model(model, path, fitted["class_names"])
    reloaded, info = load_model(path)

    assert np.max(np.abs(model.predict(x, verbose=0) - reloaded.predict(x, verbose=0))) == 0.0
    assert info.class_names == fitted["class_names"]
    assert info.input_size == 48 and info.num_outputs == 2
    # compile settings and optimizer state come back, so training could go on where it stopped
    assert int(reloaded.optimizer.iterations) == int(model.optimizer.iterations) > 0
    assert float(reloaded.optimizer.learning_rate) == pytest.approx(float(model.optimizer.learning_rate))
    assert type(reloaded.loss).__name__ == "SparseCategoricalCrossentropy"
    assert reloaded.loss.get_config()["from_logits"] is True
    for a, b in zip(model.optimizer.variables(), reloaded.optimizer.variables()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_transfer_h5_records_the_hub_handle(fitted, demo_backbone, tmp_path):
    save_model(fitted[ModelKind.TRANSFER], tmp_path / "t.h5", ["a", "b"])
    info = inspect_model_file(tmp_path / "t.h5")
    assert info.hub_handles == [str(Path(demo_backbone).resolve())]


# ---------------------------------------------------------------- files that must be refused


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.h5")


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 20)
    with pytest.raises(ModelFileError, match="not an HDF5"):
        load_model(path)


def test_truncated_h5(fitted, tmp_path):
    whole = tmp_path / "whole.h5"
    save_model(fitted[ModelKind.BASELINE], whole, ["a", "b"])
    cut = tmp_path / "cut.h5"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="damaged or truncated"):
        load_model(cut)


def test_hdf5_that_is_not_a_model(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["table"] = np.arange(10)
    with pytest.raises(ModelFileError, match="not a saved Keras model"):
        load_model(path)


def test_weights_only_file(tmp_path):
    from core.models.architectures import build_baseline

    path = tmp_path / "weights.h5"
    build_baseline(2, 48).save_weights(str(path))
    with pytest.raises(ModelFileError, match="weights only"):
        load_model(path)


@pytest.mark.parametrize("wrapped", [False, True], ids=["top-level", "inside-TimeDistributed"])
def test_lambda_layer_is_refused_without_running_it(tmp_path, wrapped):
    path, marker = lambda_model_file(tmp_path, wrapped)
    with pytest.raises(ModelFileError, match="Lambda layer"):
        load_model(path)
    assert not marker.exists()
    with pytest.raises(ModelFileError, match="Lambda layer"):
        inspect_model_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("wrapped", [False, True], ids=["top-level", "inside-TimeDistributed"])
def test_plain_keras_load_does_run_the_lambda(tmp_path, wrapped):
    """The threat the refusal guards against is real: Keras's own loader executes the stored code."""
    import tf_keras

    path, marker = lambda_model_file(tmp_path, wrapped)
    tf_keras.models.load_model(str(path))
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("marker", [{"residual_fn": "4wEAAA==", "residual_fn_type": "lambda"},
                                    {"activation": {"class_name": "__lambda__", "config": {"value": "4wEAAA=="}}}])
def test_marshalled_functions_anywhere_in_the_config_are_refused(fitted, tmp_path, marker):
    save_model(fitted[ModelKind.BASELINE], tmp_path / "ok.h5", ["a", "b"])
    path = edit_config(tmp_path / "ok.h5", tmp_path / "bad.h5",
                        lambda config: config["config"]["layers"][-1]["config"].update(marker))
    with pytest.raises(ModelFileError, match="Python function that would run"):
        inspect_model_file(path)


def test_unknown_custom_layer_is_refused(tmp_path):
    import tf_keras

    class Scale(tf_keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    model = tf_keras.Sequential([tf_keras.Input(shape=(4,)), Scale(), tf_keras.layers.Dense(2)])
    path = tmp_path / "custom.h5"
    model.save(str(path), save_format="h5")
    with pytest.raises(ModelFileError, match="custom layer 'Scale'"):
        load_model(path)


def test_hub_handle_unresolvable_offline_names_handle_and_cache(fitted, tmp_path):
    from core.settings.paths import hub_cache_dir

    saved = tmp_path / "t.h5"
    save_model(fitted[ModelKind.TRANSFER], saved, ["a", "b"])
    path = with_handle(saved, tmp_path / "online.h5", ARTICLE_URL)
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    message = str(err.value)
    assert ARTICLE_URL in message
    assert str(hub_cache_dir()) in message
    assert "folder:" in message and "SavedModel" in message


def test_hub_handle_folder_gone_names_the_handle(fitted, tmp_path):
    saved = tmp_path / "t.h5"
    save_model(fitted[ModelKind.TRANSFER], saved, ["a", "b"])
    gone = str(tmp_path / "moved-away-backbone")
    with pytest.raises(ModelFileError, match="moved-away-backbone"):
        load_model(with_handle(saved, tmp_path / "gone.h5", gone))


def test_handle_refused_by_the_callers_policy(fitted, tmp_path):
    save_model(fitted[ModelKind.TRANSFER], tmp_path / "t.h5", ["a", "b"])
    with pytest.raises(ModelFileError, match="may not use"):
        load_model(tmp_path / "t.h5", allowed_handle=lambda handle: False)

    def hide_in_wrapper(config):
        layers = config["config"]["layers"]
        layers[0] = {"class_name": "TimeDistributed", "config": {"name": "td", "layer": layers[0]}}

    hidden = edit_config(tmp_path / "t.h5", tmp_path / "hidden.h5", hide_in_wrapper)
    with pytest.raises(ModelFileError, match="may not use"):
        inspect_model_file(hidden, allowed_handle=lambda handle: False)


def test_other_input_size_and_class_count_are_read_from_the_file(tmp_path):
    from PIL import Image

    from core.models.architectures import build_baseline, compile_model
    from core.runs.predict import load_for_prediction, predict_bytes

    model = build_baseline(num_classes=4, image_size=56)
    compile_model(model, 1e-3)
    save_model(model, tmp_path / "four.h5", ["n", "e", "s", "w"])
    info = inspect_model_file(tmp_path / "four.h5")
    assert (info.input_size, info.num_outputs, info.class_names) == (56, 4, ["n", "e", "s", "w"])

    loaded = load_for_prediction(tmp_path / "four.h5")
    assert loaded.image_size == 56 and loaded.class_names == ["n", "e", "s", "w"]
    import io

    buf = io.BytesIO()
    Image.new("RGB", (300, 120), (10, 200, 30)).save(buf, "PNG")
    (result,) = predict_bytes(loaded, [("wide.png", buf.getvalue())])
    assert set(result.probabilities) == {"n", "e", "s", "w"}


def test_model_without_stored_class_names_gets_numbered_classes(tmp_path):
    from core.models.architectures import build_baseline
    from core.runs.predict import load_for_prediction

    build_baseline(num_classes=3, image_size=48).save(str(tmp_path / "plain.h5"), save_format="h5")
    loaded = load_for_prediction(tmp_path / "plain.h5")
    assert loaded.class_names == ["class 0", "class 1", "class 2"]


# ---------------------------------------------------------------- models uploaded through the web page


def test_an_upload_is_kept_once_under_a_name_from_its_content(fitted, tmp_path):
    import io

    from core.safety.model_files import store_uploaded_model

    save_model(fitted[ModelKind.BASELINE], tmp_path / "mine.h5", ["a", "b"])
    data = (tmp_path / "mine.h5").read_bytes()
    uploads = tmp_path / "uploads"
    first = store_uploaded_model(data, "../../etc/cron.d/mine.h5", uploads)
    assert first.parent == uploads and first.name.startswith("model-") and first.suffix == ".h5"
    assert first.read_bytes() == data
    assert store_uploaded_model(io.BytesIO(data), "again.h5", uploads) == first  # same content, same file
    assert [p.name for p in uploads.iterdir()] == [first.name]


def test_uploads_over_the_limit_empty_or_refused_leave_nothing(fitted, tmp_path):
    from core.safety.model_files import store_uploaded_model

    uploads = tmp_path / "uploads"
    save_model(fitted[ModelKind.TRANSFER], tmp_path / "t.h5", ["a", "b"])
    data = (tmp_path / "t.h5").read_bytes()
    with pytest.raises(ModelFileError, match=r"^'big.h5' is 0\.\d{3} MB; uploaded models may be at most 0\.010 MB\.$"):
        store_uploaded_model(data, "big.h5", uploads, max_bytes=10_000)
    with pytest.raises(ModelFileError, match="'void.h5' is empty"):
        store_uploaded_model(b"", "void.h5", uploads)
    # The demo backbone lives outside the Lab's folders: a stranger's file may not point the server at it.
    with pytest.raises(ModelFileError, match="'t.h5' points its KerasLayer at .* which uploaded models may not use"):
        store_uploaded_model(data, "t.h5", uploads)
    assert not uploads.exists() or not any(uploads.iterdir())


def test_only_the_most_recent_uploads_are_kept(fitted, tmp_path, monkeypatch):
    import os

    import core.safety.model_files
    from core.safety.model_files import store_uploaded_model

    monkeypatch.setattr(core.safety.model_files, "KEPT_UPLOADS", 2)
    uploads = tmp_path / "uploads"
    save_model(fitted[ModelKind.BASELINE], tmp_path / "m.h5", ["a", "b"])
    stored = []
    for i, names in enumerate((["a", "b"], ["b", "a"], ["x", "y"])):
        with h5py.File(tmp_path / "m.h5", "a") as f:  # other class names: other bytes, another upload
            f.attrs["lab_class_names"] = json.dumps(names)
        stored.append(store_uploaded_model((tmp_path / "m.h5").read_bytes(), f"m{i}.h5", uploads))
        os.utime(stored[-1], (1000 + i, 1000 + i))
    assert sorted(uploads.iterdir()) == sorted(stored[1:])


# ---------------------------------------------------------------- saving


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, where every write fails: disk full")
def test_a_full_disk_while_saving_says_so_in_one_plain_line(fitted):
    with pytest.raises(OSError) as failed:
        save_model(fitted[ModelKind.BASELINE], Path("/dev/full"), ["a", "b"])
    assert failed.value.errno == 28
    reason = failed.value.strerror
    assert reason.startswith("the disk is full: ") and reason.endswith(" MB free")
    # h5py's own message names HDF5's file descriptor, buffer address and write offsets, over two lines.
    assert "\n" not in str(failed.value) and "descriptor" not in str(failed.value) and "buf" not in str(failed.value)
