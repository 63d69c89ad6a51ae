"""Prediction from a reloaded run: the training pixels, correct classes, probabilities that add up."""
from __future__ import annotations

import io

import numpy as np
import pytest
from lab_helpers import TEST_IMAGE_SIZE
from PIL import Image

from core.runs.predict import Prediction, PredictionError, load_for_prediction, predict_bytes, typed_class_names
from core.settings.errors import LabError


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def fresh_images():
    """New images of both demo classes, never seen in training (another random seed)."""
    from core.data.demo import demo_image

    rng = np.random.default_rng(1234)
    return [(f"{name}_{i}.jpg", name, png_bytes(demo_image(name, rng, (80, 80)), "JPEG"))
            for name in ("circles", "squares") for i in range(8)]


@pytest.mark.parametrize("kind", ["baseline", "mobilenet_v2"])
def test_reloaded_run_classifies_new_images(trained_runs, fresh_images, kind):
    loaded = load_for_prediction(trained_runs[kind])
    assert loaded.class_names == ["circles", "squares"] and loaded.image_size == TEST_IMAGE_SIZE
    results = predict_bytes(loaded, [(name, data) for name, _, data in fresh_images])
    assert all(isinstance(r, Prediction) for r in results)
    correct = sum(r.label == truth for r, (_, truth, _) in zip(results, fresh_images))
    assert correct >= 15  # of 16
    for r in results:
        assert r.confidence == r.probabilities[r.label] == max(r.probabilities.values())
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_prediction_sees_the_pixels_training_saw(trained_runs, demo_folder):
    """Validation batches from the training pipeline and predict_bytes on the same files agree."""
    import tensorflow as tf

    from core.data.sources import VALIDATION, make_pipeline, open_source
    from core.settings.config import DataConfig

    loaded = load_for_prediction(trained_runs["baseline"])
    data = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=8)
    source = open_source(data)
    x, _ = next(iter(make_pipeline(source, VALIDATION, data, training=False)))
    expected = tf.nn.softmax(loaded.model(x, training=False)).numpy()
    files = [(p.name, p.read_bytes()) for p, _ in source.files[VALIDATION][:8]]
    got = np.array([[r.probabilities[c] for c in loaded.class_names] for r in predict_bytes(loaded, files)])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_results_keep_input_order_with_bad_files_between(trained_runs, fresh_images):
    loaded = load_for_prediction(trained_runs["mobilenet_v2"])
    files = [fresh_images[0][::2], ("empty.png", b""), fresh_images[-1][::2], ("text.jpg", b"hello")]
    results = predict_bytes(loaded, files)
    assert [type(r) for r in results] == [Prediction, PredictionError, Prediction, PredictionError]
    assert [r.name for r in results] == [name for name, _ in files]
    assert results[0].label == "circles" and results[2].label == "squares"
    assert predict_bytes(loaded, []) == []


def test_softmax_model_is_not_softmaxed_twice(tmp_path):
    import tf_keras

    from core.safety.model_files import save_model

    model = tf_keras.Sequential([tf_keras.Input(shape=(24, 24, 3)), tf_keras.layers.GlobalAveragePooling2D(),
                                 tf_keras.layers.Dense(3, activation="softmax")])
    save_model(model, tmp_path / "soft.h5", ["x", "y", "z"])
    loaded = load_for_prediction(tmp_path / "soft.h5")
    assert loaded.softmax_output
    img = np.full((24, 24, 3), 200, np.uint8)
    (result,) = predict_bytes(loaded, [("grey.png", png_bytes(Image.fromarray(img)))])
    direct = model(np.full((1, 24, 24, 3), 200 / 255, np.float32)).numpy()[0]
    np.testing.assert_allclose([result.probabilities[c] for c in "xyz"], direct, atol=1e-6)


def test_non_square_model_input_is_refused(tmp_path):
    import tf_keras

    from core.safety.model_files import save_model

    model = tf_keras.Sequential([tf_keras.Input(shape=(24, 40, 3)), tf_keras.layers.Flatten(),
                                 tf_keras.layers.Dense(2)])
    save_model(model, tmp_path / "wide.h5", ["a", "b"])
    with pytest.raises(LabError, match="square RGB"):
        load_for_prediction(tmp_path / "wide.h5")


def test_missing_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LabError, match="does not exist"):
        load_for_prediction(tmp_path / "no-run")


def _whole_and_shared(path):
    return load_for_prediction(path), load_for_prediction(path, share_backbone=True)


def test_a_frozen_transfer_model_runs_on_the_shared_backbone_with_the_whole_models_outputs(
        trained_runs, fresh_images, tmp_path):
    import shutil

    from core.data.images import decode_image
    from core.data.sources import preprocess

    whole, shared = _whole_and_shared(trained_runs["mobilenet_v2"])
    assert whole.backbone is None and shared.model is None and shared.backbone is not None
    assert (shared.class_names, shared.image_size) == (whole.class_names, whole.image_size)
    images = [decode_image(data, name) for name, _, data in fresh_images]
    np.testing.assert_allclose(shared.probabilities(images), whole.probabilities(images), atol=1e-5)
    np.testing.assert_allclose(shared.probabilities(images[:1]), whole.probabilities(images[:1]), atol=1e-5)
    batch = np.stack([np.asarray(preprocess(img, whole.image_size)) for img in images[:4]])
    np.testing.assert_allclose(shared.outputs(batch), whole.outputs(batch), atol=1e-4)
    # Another participant's model on the same module: its own head, the same backbone object.
    other = tmp_path / "other.h5"
    shutil.copyfile(trained_runs["mobilenet_v2"] / "model.h5", other)
    assert load_for_prediction(other, share_backbone=True).backbone is shared.backbone


def test_a_baseline_or_fine_tuned_backbone_is_reloaded_whole(trained_runs, fresh_images, tmp_path):
    import shutil

    import h5py

    from core.data.images import decode_image

    assert load_for_prediction(trained_runs["baseline"], share_backbone=True).model is not None
    tuned = tmp_path / "tuned.h5"
    shutil.copyfile(trained_runs["mobilenet_v2"] / "model.h5", tuned)
    with h5py.File(tuned, "a") as f:  # one backbone weight moved, as fine-tuning leaves it
        group = f["model_weights/feature_extractor"]
        name = group.attrs["weight_names"][0]
        name = name.decode() if isinstance(name, bytes) else name
        group[name][...] = group[name][()] + 0.5
    whole, shared = _whole_and_shared(tuned)
    assert shared.model is not None and shared.backbone is None
    images = [decode_image(data, name) for name, _, data in fresh_images[:4]]
    np.testing.assert_allclose(shared.probabilities(images), whole.probabilities(images), atol=1e-6)
    original = load_for_prediction(trained_runs["mobilenet_v2"], share_backbone=True).probabilities(images)
    assert not np.allclose(whole.probabilities(images), original, atol=1e-4)  # the change reached the outputs


def test_a_softmax_head_on_the_shared_backbone_is_not_softmaxed_twice(demo_backbone, fresh_images, tmp_path):
    import tensorflow_hub as hub
    import tf_keras

    from core.data.images import decode_image
    from core.safety.model_files import save_model

    model = tf_keras.Sequential([tf_keras.Input(shape=(TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3)),
                                 hub.KerasLayer(str(demo_backbone), trainable=False, name="feature_extractor"),
                                 tf_keras.layers.Dense(2, activation="softmax")])
    save_model(model, tmp_path / "soft.h5", ["circles", "squares"])
    whole, shared = _whole_and_shared(tmp_path / "soft.h5")
    assert shared.backbone is not None and shared.softmax_output
    images = [decode_image(data, name) for name, _, data in fresh_images[:4]]
    np.testing.assert_allclose(shared.probabilities(images), whole.probabilities(images), atol=1e-5)


def test_typed_class_names_are_one_distinct_bounded_name_per_class():
    assert typed_class_names(" cat ,dog", 2) == ["cat", "dog"]
    assert typed_class_names("tabby  cat, dog", 2) == ["tabby cat", "dog"]  # inner runs of spaces made one
    for wrong, why in (("cat", "give 2 names"), ("cat,,dog", "give 2 names"), ("cat, dog, fox", "give 2 names"),
                       ("cat, cat", "different name"), ("c" * 201 + ", dog", "at most 200 characters")):
        with pytest.raises(ValueError, match=why):
            typed_class_names(wrong, 2)
