"""Fine-tuning (a second phase with the hub backbone unfrozen) and training-only augmentation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.data.sources import TRAIN, VALIDATION, make_pipeline, open_source
from core.settings.config import DataConfig, ModelKind, TrainConfig, uses_feature_cache, validate
from core.settings.errors import LabError
from tests.conftest import TEST_IMAGE_SIZE


@pytest.fixture(scope="module")
def fine_tuned_run(tmp_path_factory, demo_folder, demo_backbone):
    from core.training.experiment import run_experiment

    data = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=16, limit=40)
    train = TrainConfig(model=ModelKind.TRANSFER, epochs=2, learning_rate=1e-2, handle=str(demo_backbone),
                        fine_tune_epochs=2, fine_tune_learning_rate=1e-3)
    return run_experiment(data, train, tmp_path_factory.mktemp("ft-runs"), evaluate=False)


def _backbone_weights(model) -> list[np.ndarray]:
    return [w.numpy().copy() for w in model.layers[0].weights]


def test_fine_tuning_appends_marked_epochs_and_changes_the_backbone(fine_tuned_run, demo_backbone):
    import tensorflow_hub as hub

    from core.safety.model_files import load_model

    history = json.loads((fine_tuned_run / "history.json").read_text())
    metrics = json.loads((fine_tuned_run / "metrics.json").read_text())
    assert [row["phase"] for row in history] == ["frozen", "frozen", "fine-tune", "fine-tune"]
    assert metrics["fine_tune_start_epoch"] == 3 and metrics["epochs_completed"] == 4
    model, _ = load_model(fine_tuned_run / "model.h5")
    original = [w.numpy() for w in hub.KerasLayer(str(demo_backbone)).weights]
    tuned = _backbone_weights(model)
    assert len(tuned) == len(original) > 0
    assert any(not np.allclose(a, b) for a, b in zip(tuned, original)), "the backbone did not change"


def test_fine_tuned_model_reloads_the_article_way_with_identical_predictions(fine_tuned_run):
    import tensorflow_hub as hub
    import tf_keras

    from core.safety.model_files import load_model

    ours, _ = load_model(fine_tuned_run / "model.h5")
    article = tf_keras.models.load_model(str(fine_tuned_run / "model.h5"), custom_objects={"KerasLayer": hub.KerasLayer})
    x = np.random.default_rng(0).random((4, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE, 3), dtype=np.float32)
    assert np.max(np.abs(ours(x).numpy() - article(x).numpy())) == 0.0
    assert any(w.trainable for w in article.layers[0].weights)


def test_fine_tuning_is_refused_for_the_baseline():
    with pytest.raises(LabError, match="baseline CNN has none"):
        validate(DataConfig(image_size=64), TrainConfig(model=ModelKind.BASELINE, fine_tune_epochs=1))
    with pytest.raises(LabError, match="0 \\(off\\) or more"):
        validate(DataConfig(image_size=64), TrainConfig(fine_tune_epochs=-1))


def test_augmentation_changes_training_batches_but_leaves_validation_untouched(demo_folder):
    plain = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=8, limit=24)
    augmented = DataConfig(source=plain.source, image_size=TEST_IMAGE_SIZE, batch_size=8, limit=24, augment=True)
    source = open_source(plain)

    def first(config, split, training):
        x, y = next(iter(make_pipeline(source, split, config, training=training)))
        return x.numpy(), y.numpy()

    val_plain, val_aug = first(plain, VALIDATION, False), first(augmented, VALIDATION, False)
    assert np.array_equal(val_plain[0], val_aug[0]) and np.array_equal(val_plain[1], val_aug[1])
    train_plain, train_aug = first(plain, TRAIN, True), first(augmented, TRAIN, True)
    assert np.array_equal(train_plain[1], train_aug[1])  # same images in the same order ...
    assert not np.allclose(train_plain[0], train_aug[0])  # ... but different pixels
    assert train_aug[0].min() >= 0.0 and train_aug[0].max() <= 1.0


def test_augmentation_turns_the_feature_cache_off_and_is_recorded(tmp_path, demo_folder, demo_backbone):
    from core.training.experiment import run_experiment

    data = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=16, limit=32,
                      augment=True)
    train = TrainConfig(model=ModelKind.TRANSFER, epochs=1, handle=str(demo_backbone))
    assert not uses_feature_cache(data, train)
    assert uses_feature_cache(DataConfig(), train)
    run = run_experiment(data, train, tmp_path, evaluate=False)
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["data"]["augment"] is True and config["feature_cache_used"] is False
    assert "feature_origin" not in metrics
