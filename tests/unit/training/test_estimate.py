"""Duration estimates from measured per-image costs, and the Quick demo preset that fits a budget."""
from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
from pathlib import Path

import pytest

from core.runs.folders import open_run
from core.settings.config import DataConfig, ModelKind, data_from_dict, train_from_dict
from core.settings.errors import LabError
from core.settings.text import FINE_TUNE_PHASE, duration
from core.training.estimate import (
    OVERHEAD_SECONDS,
    PLAN_SHARE_OF_BUDGET,
    TIMINGS_FILE,
    TIMINGS_KEPT,
    Observed,
    Speed,
    estimate,
    fits_memory,
    observation,
    observed_timing,
    quick_demo,
    record_timing,
    split_sizes,
    timing_key,
)

BASELINE = Speed(train=0.01, evaluate=0.005, setup=2.0, decode=0.002)
TRANSFER = Speed(train=0.004, evaluate=0.003, setup=1.0, features=0.003, head_train=0.0001, head_evaluate=0.00005,
                 decode=0.002)
SPEEDS = {ModelKind.BASELINE: BASELINE, ModelKind.TRANSFER: TRANSFER}


def test_baseline_decodes_in_the_first_epoch_only_when_the_split_fits_memory():
    est = estimate(ModelKind.BASELINE, BASELINE, 100, 25, epochs=3, image_size=64)
    compute = 100 * 0.01 + 25 * 0.005
    assert est.first_epoch_seconds == pytest.approx(compute + 125 * 0.002)
    assert est.epoch_seconds == pytest.approx(compute)
    assert est.setup_seconds == pytest.approx(2.0 + OVERHEAD_SECONDS)
    assert est.total_seconds == pytest.approx(est.setup_seconds + est.first_epoch_seconds + 2 * compute)
    assert est.feature_seconds == 0
    # 100 images at 1024x1024 are too big to keep in memory and are decoded in every epoch, as the pipeline
    # will do; the 25 validation images still fit.
    assert not fits_memory(100, 1024) and fits_memory(25, 1024)
    big = estimate(ModelKind.BASELINE, BASELINE, 100, 25, epochs=3, image_size=1024)
    assert big.epoch_seconds == pytest.approx(compute + 100 * 0.002)


def test_cached_transfer_pays_for_features_once_then_only_for_the_head():
    est = estimate(ModelKind.TRANSFER, TRANSFER, 100, 25, epochs=3, image_size=224, cache_features=True)
    assert est.feature_seconds == pytest.approx(125 * (0.003 + 0.002))
    assert est.epoch_seconds == pytest.approx(100 * 0.0001 + 25 * 0.00005)
    assert est.total_seconds == pytest.approx(1.0 + OVERHEAD_SECONDS + est.feature_seconds + 3 * est.epoch_seconds)
    uncached = estimate(ModelKind.TRANSFER, TRANSFER, 100, 25, epochs=3, image_size=224, cache_features=False)
    assert uncached.feature_seconds == 0
    # On cached features only the Dense head's steps are traced, never the whole model's training step.
    quick_head = dataclasses.replace(TRANSFER, head_setup=0.25)
    assert estimate(ModelKind.TRANSFER, quick_head, 100, 25, 3, 224).setup_seconds == 0.25 + OVERHEAD_SECONDS
    assert estimate(ModelKind.TRANSFER, quick_head, 100, 25, 3, 224,
                    cache_features=False).setup_seconds == 1.0 + OVERHEAD_SECONDS
    assert uncached.epoch_seconds == pytest.approx(100 * 0.004 + 25 * 0.003)
    assert uncached.total_seconds > est.total_seconds


def test_fine_tuning_epochs_run_the_whole_model_on_decoded_images_after_the_cached_ones():
    speed = dataclasses.replace(TRANSFER, fine_tune=0.012, fine_tune_setup=4.0)
    frozen = estimate(ModelKind.TRANSFER, speed, 100, 25, epochs=3, image_size=224)
    tuned = estimate(ModelKind.TRANSFER, speed, 100, 25, epochs=3, image_size=224, fine_tune_epochs=2)
    compute = 100 * 0.012 + 25 * 0.003
    assert tuned.fine_tune_epochs == 2 and tuned.fine_tune_epoch_seconds == pytest.approx(compute)
    # Its own pipeline decodes every image again in the first fine-tuning epoch, then keeps them in memory.
    assert tuned.fine_tune_seconds == pytest.approx(4.0 + 2 * compute + 125 * 0.002)
    assert tuned.feature_seconds == frozen.feature_seconds
    assert tuned.total_seconds == pytest.approx(frozen.total_seconds + tuned.fine_tune_seconds)
    baseline = estimate(ModelKind.BASELINE, BASELINE, 100, 25, epochs=3, image_size=64, fine_tune_epochs=2)
    assert baseline.fine_tune_seconds == 0 and baseline.fine_tune_epochs == 0
    with pytest.raises(ValueError, match="measure_fine_tune"):
        estimate(ModelKind.TRANSFER, TRANSFER, 100, 25, epochs=3, image_size=224, fine_tune_epochs=1)


def test_split_sizes_follow_the_limit_and_the_80_20_proportion():
    assert split_sizes(18610, 4652, None) == (18610, 4652)
    assert split_sizes(18610, 4652, 200) == (200, 50)
    assert split_sizes(96, 24, 500) == (96, 24)


def test_quick_demo_takes_the_largest_limit_that_fits_with_the_articles_epochs():
    """Planned to 85% of the budget: an estimate 15% short still finishes within it."""
    plan = 60 * PLAN_SHARE_OF_BUDGET
    preset = quick_demo(60, SPEEDS, available_train=18610, available_val=4652, image_size=224)
    assert preset.fits and preset.budget_seconds == 60
    assert preset.epochs == {ModelKind.BASELINE: 15, ModelKind.TRANSFER: 3}
    assert preset.total_seconds <= plan and preset.total_seconds * 1.15 <= 60
    one_more = quick_demo(10**6, SPEEDS, 18610, 4652, 224)  # what the next image would cost
    assert one_more.limit == 18610
    n_train, n_val = split_sizes(18610, 4652, preset.limit + 1)
    over = sum(estimate(k, SPEEDS[k], n_train, n_val, preset.epochs[k], 224).total_seconds for k in SPEEDS)
    assert over > plan


def test_quick_demo_drops_baseline_epochs_before_images_and_says_when_nothing_fits():
    tight = quick_demo(25, SPEEDS, 18610, 4652, image_size=224, min_images=200)
    assert tight.fits and tight.limit >= 200
    assert tight.epochs[ModelKind.BASELINE] < 15
    assert tight.total_seconds <= 25 * PLAN_SHARE_OF_BUDGET
    hopeless = quick_demo(5, SPEEDS, 18610, 4652, image_size=224)
    assert not hopeless.fits
    assert hopeless.limit == 200 and hopeless.epochs == {ModelKind.BASELINE: 1, ModelKind.TRANSFER: 1}


def test_quick_demo_on_a_small_dataset_uses_all_of_it():
    preset = quick_demo(180, SPEEDS, available_train=96, available_val=24, image_size=64)
    assert preset.fits and preset.limit == 96
    assert preset.estimates[ModelKind.BASELINE].train_images == 96


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (0.4, "under 1 s"), (45, "45 s"), (200, "3 min 20 s"), (180, "3 min"),
                                           (1500, "25 min"), (9000, "2 h 30 min")])
def test_durations_read_at_a_glance(seconds, text):
    assert duration(seconds) == text


def test_measured_speeds_come_from_the_real_models(demo_backbone, demo_folder):
    from core.data.sources import open_source
    from core.training.estimate import measure_decode, measure_speed

    baseline = measure_speed(ModelKind.BASELINE, 48, 8, handle="", num_classes=2)
    assert baseline.train > 0 and baseline.evaluate > 0 and baseline.setup > 0
    assert baseline.features == baseline.head_train == 0
    transfer = measure_speed(ModelKind.TRANSFER, 48, 8, handle=str(demo_backbone), num_classes=2)
    assert min(transfer.train, transfer.features, transfer.head_train, transfer.head_evaluate) > 0
    assert transfer.head_setup > 0 and baseline.head_setup == 0
    source = open_source(DataConfig(source=f"folder:{demo_folder}", image_size=48, batch_size=8))
    assert measure_decode(source, 48, 8) > 0


def test_a_fine_tuning_step_is_timed_through_the_unfrozen_backbone(demo_backbone):
    from core.training.estimate import measure_fine_tune

    per_image, setup = measure_fine_tune(48, 8, handle=str(demo_backbone), num_classes=2)
    assert per_image > 0 and setup > 0


def test_measuring_a_model_that_cannot_be_built_says_why(tmp_path):
    from core.training.estimate import measure_speed

    with pytest.raises(LabError, match="not a SavedModel folder"):
        measure_speed(ModelKind.TRANSFER, 48, 8, handle=str(tmp_path), num_classes=2)


OBSERVED = Observed(fixed=10.0, first_epoch=0.02, epoch=0.01, features=0.03, in_memory=True, runs=3)


def test_finished_runs_replace_the_timed_costs_of_their_setting():
    est = estimate(ModelKind.BASELINE, BASELINE, 100, 25, epochs=3, image_size=64, observed=OBSERVED)
    assert est.setup_seconds == 10.0 and est.observed_runs == 3
    assert est.first_epoch_seconds == pytest.approx(125 * 0.02)
    assert est.epoch_seconds == pytest.approx(125 * 0.01)
    assert est.total_seconds == pytest.approx(10.0 + 125 * 0.02 + 2 * 125 * 0.01)
    cached = estimate(ModelKind.TRANSFER, TRANSFER, 100, 25, epochs=3, image_size=224, observed=OBSERVED)
    assert cached.feature_seconds == pytest.approx(125 * 0.03)
    # Images too big to keep in memory decode in every epoch, which the observed runs never paid for:
    # their epochs do not apply, the rest does.
    big = estimate(ModelKind.BASELINE, BASELINE, 100, 25, epochs=3, image_size=1024, observed=OBSERVED)
    timed = estimate(ModelKind.BASELINE, BASELINE, 100, 25, epochs=3, image_size=1024)
    assert big.setup_seconds == 10.0 and timed.observed_runs == 0
    assert (big.first_epoch_seconds, big.epoch_seconds) == (timed.first_epoch_seconds, timed.epoch_seconds)
    # Runs of a single epoch say nothing of later ones: the timed later epoch is scaled as their first was.
    single = dataclasses.replace(OBSERVED, epoch=None)
    est = estimate(ModelKind.BASELINE, BASELINE, 100, 25, epochs=3, image_size=64, observed=single)
    plain = estimate(ModelKind.BASELINE, BASELINE, 100, 25, epochs=3, image_size=64)
    assert est.epoch_seconds == pytest.approx(plain.epoch_seconds * (125 * 0.02) / plain.first_epoch_seconds)
    # The Quick demo plans with them too.
    preset = quick_demo(60, SPEEDS, 18610, 4652, 224, observed={ModelKind.BASELINE: OBSERVED})
    assert preset.estimates[ModelKind.BASELINE].observed_runs == 3
    assert preset.estimates[ModelKind.TRANSFER].observed_runs == 0


def _rewrite(run: Path, name: str, change) -> None:
    path = run / name
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def test_a_finished_run_teaches_the_estimates_of_its_own_setting(trained_runs, demo_backbone, demo_folder, tmp_path):
    runs = {kind: open_run(trained_runs[kind.value]) for kind in ModelKind}
    folder = tmp_path / "board"
    configs = {kind: (data_from_dict(r.config["data"]), train_from_dict(r.config["train"]))
               for kind, r in runs.items()}
    for kind, run in runs.items():
        epochs = sum(row["seconds"] for row in run.history)
        features = run.metrics["feature_seconds"]
        for extra in (7.0, 5.0, 9.0):  # three runs of the setting: the medians speak for it
            record_timing(folder, *configs[kind], run.path, epochs + features + extra)
        seen = observed_timing(folder, *configs[kind])
        images = run.metrics["train_images"] + run.metrics["val_images"]
        assert seen.runs == 3 and seen.fixed == pytest.approx(7.0)
        assert seen.first_epoch == pytest.approx(run.history[0]["seconds"] / images)
        assert seen.epoch == pytest.approx(statistics.median(r["seconds"] for r in run.history[1:]) / images)
        assert seen.in_memory
    # Only the transfer run computed backbone features.
    assert observed_timing(folder, *configs[ModelKind.BASELINE]).features is None
    transfer = runs[ModelKind.TRANSFER]
    images = transfer.metrics["train_images"] + transfer.metrics["val_images"]
    assert observed_timing(folder, *configs[ModelKind.TRANSFER]).features == pytest.approx(
        transfer.metrics["feature_seconds"] / images)
    # Another image size, batch size or backbone is another setting; the limit, epochs and seed are not.
    data, train = configs[ModelKind.BASELINE]
    assert observed_timing(folder, dataclasses.replace(data, image_size=2 * data.image_size), train) is None
    assert observed_timing(folder, dataclasses.replace(data, batch_size=8), train) is None
    assert observed_timing(folder, *configs[ModelKind.TRANSFER][:1],
                           dataclasses.replace(configs[ModelKind.TRANSFER][1], handle=str(tmp_path))) is None
    assert observed_timing(folder, dataclasses.replace(data, limit=50, seed=3), dataclasses.replace(train, epochs=9))
    # Only the latest runs count.
    for _ in range(TIMINGS_KEPT + 2):
        record_timing(folder, data, train, runs[ModelKind.BASELINE].path, 1000.0)
    assert observed_timing(folder, data, train).runs == TIMINGS_KEPT


def test_stopped_fine_tuned_and_resumed_runs_teach_nothing(trained_runs, tmp_path):
    source = Path(trained_runs[ModelKind.BASELINE.value])
    changes = {
        "stopped": ("metrics.json", lambda m: dict(m, stopped_early=True)),
        "fine-tuned": ("history.json", lambda h: [*h, dict(h[-1], phase=FINE_TUNE_PHASE)]),
        "resumed": ("config.json", lambda c: dict(c, parent={"run_id": "x", "path": "x", "epochs": 1})),
    }
    for name, (file, change) in changes.items():
        run = tmp_path / name
        shutil.copytree(source, run)
        _rewrite(run, file, change)
        assert observation(run, 100.0) is None, name
    assert observation(tmp_path / "missing", 100.0) is None
    assert observation(source, 100.0) is not None


def test_a_damaged_timings_file_falls_back_on_timed_batches_and_is_rewritten(trained_runs, tmp_path):
    run = open_run(trained_runs[ModelKind.BASELINE.value])
    data, train = data_from_dict(run.config["data"]), train_from_dict(run.config["train"])
    for damage in ("not json", "[1, 2]", json.dumps({timing_key(data, train): [{"fixed": "x"}]})):
        (tmp_path / TIMINGS_FILE).write_text(damage)
        assert observed_timing(tmp_path, data, train) is None, damage
    record_timing(tmp_path, data, train, run.path, 60.0)
    assert observed_timing(tmp_path, data, train).runs == 1
