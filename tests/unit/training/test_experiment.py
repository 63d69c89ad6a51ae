"""One experiment end to end on generated images: learning, reporting, stopping, repeating."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from lab_helpers import TEST_IMAGE_SIZE

from core.runs.folders import list_runs, open_run
from core.settings.config import DataConfig, ModelKind, TrainConfig
from core.settings.errors import LabError, StopRequested
from core.training.experiment import Callbacks, fit, run_experiment


def demo_data(demo_folder, **kw) -> DataConfig:
    return DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=16, **kw)


def history_without_time(run_dir):
    rows = json.loads((run_dir / "history.json").read_text())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.mark.parametrize("kind", ["baseline", "mobilenet_v2"])
def test_both_models_learn_the_generated_classes(trained_runs, kind):
    record = open_run(trained_runs[kind])
    assert record.metrics["final_val_accuracy"] >= 0.9
    assert record.metrics["best_val_accuracy"] >= record.metrics["final_val_accuracy"]
    assert record.history[-1]["val_loss"] < record.history[0]["loss"]  # it learned, not guessed


def test_transfer_model_learns_through_the_hub_layer_every_epoch(demo_folder, demo_backbone, tmp_path):
    """The article's way: every batch goes through hub.KerasLayer, no cached features."""
    train = TrainConfig(model=ModelKind.TRANSFER, epochs=4, learning_rate=1e-2, handle=str(demo_backbone),
                        cache_features=False)
    run = open_run(run_experiment(demo_data(demo_folder), train, tmp_path))
    assert run.metrics["final_val_accuracy"] >= 0.9
    assert run.metrics["feature_seconds"] == 0
    assert (run.metrics["total_params"], run.metrics["trainable_params"]) == (2432 + 130, 130)


def test_callbacks_report_every_epoch_and_batch(demo_folder, demo_backbone, tmp_path):
    from core.data.sources import open_source

    epochs, batches, statuses = [], [], []
    data = demo_data(demo_folder, limit=40)
    source = open_source(data)
    result = fit(source, data, TrainConfig(model=ModelKind.BASELINE, epochs=2),
                 Callbacks(on_epoch=epochs.append, on_batch=batches.append, on_status=statuses.append))
    assert [(r.epoch, r.epochs) for r in epochs] == [(1, 2), (2, 2)]
    assert set(epochs[0].metrics) == {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert all(r.seconds > 0 for r in epochs)
    steps = 3  # 40 training images in batches of 16
    assert [(b.epoch, b.step, b.steps) for b in batches] == [(e, s, steps) for e in (1, 2) for s in (1, 2, 3)]
    assert statuses and all(isinstance(s, str) for s in statuses)
    assert [row["loss"] for row in result.history] == [r.metrics["loss"] for r in epochs]
    assert not result.stopped_early
    assert result.total_params == result.trainable_params > 0


@pytest.mark.parametrize("kind", [ModelKind.BASELINE, ModelKind.TRANSFER])
def test_stop_after_the_first_epoch_saves_a_one_epoch_run(demo_folder, demo_backbone, tmp_path, kind):
    done = []
    callbacks = Callbacks(on_epoch=done.append, should_stop=lambda: len(done) >= 1)
    train = TrainConfig(model=kind, epochs=5, handle=str(demo_backbone))
    run = open_run(run_experiment(demo_data(demo_folder, limit=40), train, tmp_path, callbacks))
    assert len(run.history) == 1 and len(done) == 1
    assert run.metrics["stopped_early"] is True
    assert run.metrics["epochs_completed"] == 1
    assert run.config["epochs"] == 5  # what was asked for stays on record


def test_stop_before_any_epoch_raises_and_saves_nothing(demo_folder, demo_backbone, tmp_path):
    for kind in ModelKind:
        train = TrainConfig(model=kind, epochs=3, handle=str(demo_backbone))
        with pytest.raises(StopRequested):
            run_experiment(demo_data(demo_folder, limit=40), train, tmp_path, Callbacks(should_stop=lambda: True))
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_a_run_repeats_exactly_from_its_config(trained_runs, tmp_path):
    from core.settings.config import data_from_dict, train_from_dict

    original = open_run(trained_runs["mobilenet_v2"])
    data = data_from_dict(original.config["data"])
    train = train_from_dict(original.config["train"])
    again = run_experiment(data, train, tmp_path)
    assert history_without_time(again) == history_without_time(original.path)


@pytest.mark.parametrize("data_kw,train_kw,match", [
    ({}, {"epochs": 0}, "Epochs must be at least 1"),
    ({}, {"epochs": -3}, "Epochs must be at least 1"),
    ({"batch_size": 0}, {}, "Batch size must be at least 1"),
    ({"batch_size": 500}, {}, "larger than the 96 training images"),
    ({"image_size": 40}, {"model": ModelKind.BASELINE}, "at least 46x46"),
    ({}, {"learning_rate": 2.0}, "Learning rate must be between 0 and 1"),
    ({"limit": 1}, {}, "limit must be at least 2"),
])
def test_settings_that_cannot_work_are_refused_before_training(demo_folder, demo_backbone, tmp_path, data_kw,
                                                               train_kw, match):
    data = replace(demo_data(demo_folder), **data_kw)
    train = TrainConfig(**{"model": ModelKind.TRANSFER, "epochs": 1, "handle": str(demo_backbone), **train_kw})
    with pytest.raises(LabError, match=match):
        run_experiment(data, train, tmp_path)
    assert list_runs(tmp_path).runs == []


def test_balanced_class_weights_change_what_the_loss_counts(demo_folder, demo_backbone, tmp_path):
    """On a 4:1 folder the rare class's images weigh 4x the common one's, so the same seed trains differently."""
    import shutil

    from core.data.sources import open_source

    data_dir = tmp_path / "imbalanced"
    shutil.copytree(demo_folder / "circles", data_dir / "circles")
    (data_dir / "squares").mkdir()
    for image in sorted((demo_folder / "squares").iterdir())[:15]:
        shutil.copy(image, data_dir / "squares")
    data = DataConfig(source=f"folder:{data_dir}", image_size=TEST_IMAGE_SIZE, batch_size=16)
    source = open_source(data)
    plain = TrainConfig(model=ModelKind.TRANSFER, epochs=1, learning_rate=1e-2, handle=str(demo_backbone))
    weighted = replace(plain, class_weight="balanced")
    losses = [fit(source, data, train).history[0]["loss"] for train in (plain, weighted)]
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)
    with pytest.raises(LabError, match="Class weight must be one of balanced or none"):
        fit(source, data, replace(plain, class_weight="inverse"))


def test_frozen_transfer_models_of_one_process_share_its_backbone_and_train_as_with_their_own(
        demo_folder, demo_backbone, tmp_path):
    """A warm worker's successive jobs put their Dense on one loaded module; what they learn and save is
    what a model with its own copy learns and saves, and a fine-tuned model never gets the shared copy."""
    import tf_keras

    from core.models import architectures
    from core.models.architectures import build_transfer
    from core.runs.reload_check import RELOAD_CHECK_KEY

    architectures._shared_backbones.clear()  # the first run loads the module as a model of its own would
    data = demo_data(demo_folder, limit=48)
    train = TrainConfig(model=ModelKind.TRANSFER, epochs=2, learning_rate=1e-2, handle=str(demo_backbone))
    first = run_experiment(data, train, tmp_path / "first")
    (loaded,) = architectures._shared_backbones.values()
    second = run_experiment(data, train, tmp_path / "second")
    assert list(architectures._shared_backbones.values()) == [loaded]
    assert build_transfer(2, TEST_IMAGE_SIZE, str(demo_backbone), shared=True).layers[0] is \
        build_transfer(2, TEST_IMAGE_SIZE, str(demo_backbone), shared=True).layers[0]
    tf_keras.backend.clear_session()  # as the worker does between jobs
    third = run_experiment(data, train, tmp_path / "third")
    own = build_transfer(2, TEST_IMAGE_SIZE, str(demo_backbone))
    assert own.layers[0] is not build_transfer(2, TEST_IMAGE_SIZE, str(demo_backbone), shared=True).layers[0]
    tuned = build_transfer(2, TEST_IMAGE_SIZE, str(demo_backbone), trainable=True, shared=True)
    assert tuned.layers[0] is not own.layers[0] and tuned.layers[0].trainable
    assert history_without_time(first) == history_without_time(second) == history_without_time(third)
    for run in (first, second, third):
        assert open_run(run).metrics[RELOAD_CHECK_KEY]["max_abs_diff"] == 0.0
