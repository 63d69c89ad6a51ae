"""How long a run will take here, from a short warm-up on this machine, and the "Quick demo" preset.

`measure_speed` times a few training and validation batches of the real model on random pixels, and
`measure_decode` a few batches read from the real source; `estimate` extrapolates those per-image costs
to a whole run the way `core.training.experiment.fit` will execute it (features computed once when cached, decoded
images kept in memory when a split fits the pipeline's budget). Fine-tuning epochs run the whole model
with the backbone unfrozen on decoded images, never on cached features; `measure_fine_tune` times that
step separately, since only runs that fine-tune need it. `quick_demo` picks the training-image limit, and
fewer epochs only when it must, so both experiments together fit a presenter's time budget.

A few timed batches miss what a whole run also does (tracing, saving, the reload check, evaluating) and
swing with the server's load, so every run that finishes here leaves its real costs in a timings file
(`record_timing`), and later estimates of the same setting use those instead (`observed_timing`, passed
to `estimate` as `observed`).
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from core.data.sources import DEFAULT_CACHE_BUDGET_BYTES, validation_limit
from core.settings.files import read_json, update_json
from core.settings.specs import ModelKind, spec
from core.settings.text import is_number

# Opening the data, writing model.h5 and the run's JSON files: seconds no warm-up batch sees.
OVERHEAD_SECONDS = 3.0
# Epoch pairs (baseline, transfer) tried in order when the article's 15 and 3 do not fit a budget:
# fewer baseline epochs first, since the baseline costs far more per epoch.
EPOCH_FALLBACKS = ((15, 3), (10, 3), (6, 3), (4, 3), (3, 2), (2, 2), (1, 1))
MIN_DEMO_IMAGES = 200  # fewer training images than this make both curves too noisy to compare
# Estimates land within about 15% of the actual time, either way, so the Quick demo plans its runs to this
# share of the budget: a run 15% slower than estimated still finishes inside the budget.
PLAN_SHARE_OF_BUDGET = 0.85
TIMINGS_FILE = "timings.json"  # in the job board's folder: what finished runs here really took, per setting
TIMINGS_KEPT = 5  # latest runs kept per setting; their medians speak for it
TIMINGS_SETTINGS = 64  # settings kept in the file, the least recently trained dropped first
# 64 settings of 5 runs take about 70 KB; a larger file was not written here and is not read (pages read
# it on every rerun).
TIMINGS_MAX_BYTES = 1024 * 1024

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speed:
    """Seconds per image for one model configuration, measured here."""
    train: float  # a training step of the whole model
    evaluate: float  # a validation step of the whole model
    setup: float  # building the model and tracing its first step (once per run)
    features: float = 0.0  # the frozen backbone alone (transfer model)
    head_train: float = 0.0  # a training step of the Dense head on cached features
    head_evaluate: float = 0.0
    decode: float = 0.0  # reading, decoding and resizing one image of the chosen source
    fine_tune: float = 0.0  # a training step with the backbone unfrozen (measure_fine_tune)
    fine_tune_setup: float = 0.0  # recompiling and tracing that step once
    # Building the model and tracing the Dense head's steps: the set-up of a run on cached features, which
    # never traces the whole model's training step (0: use setup).
    head_setup: float = 0.0


@dataclass(frozen=True)
class Observed:
    """What finished runs of one setting took here (medians of the latest TIMINGS_KEPT), per run or per image.

    Per-image figures count training and validation images together, so they scale to another limit.
    """
    fixed: float  # seconds outside epochs and feature extraction: opening, building, saving, reload check, evaluation
    first_epoch: float  # seconds per image of the first epoch (it also decodes and traces)
    epoch: float | None  # seconds per image of a later epoch; None when no run had one
    features: float | None  # seconds per image computing backbone features; None when none were computed
    in_memory: bool  # whether those runs kept decoded images in memory after their first epoch
    runs: int


@dataclass(frozen=True)
class Estimate:
    total_seconds: float
    setup_seconds: float
    feature_seconds: float  # computing cached backbone features (0 when not cached)
    first_epoch_seconds: float
    epoch_seconds: float  # each later epoch
    train_images: int
    val_images: int
    epochs: int
    fine_tune_epochs: int = 0
    fine_tune_seconds: float = 0.0  # all fine-tuning epochs, their set-up and first decoding included
    fine_tune_epoch_seconds: float = 0.0  # each fine-tuning epoch after the first
    observed_runs: int = 0  # finished runs here the estimate comes from; 0: from batches timed now


@dataclass(frozen=True)
class DemoPreset:
    limit: int  # training images for both experiments
    epochs: dict[ModelKind, int]
    estimates: dict[ModelKind, Estimate]
    budget_seconds: float
    fits: bool  # False when even the smallest setting is over budget
    start_seconds: float = 0.0  # starting the worker process that trains both, once

    @property
    def total_seconds(self) -> float:
        return self.start_seconds + sum(e.total_seconds for e in self.estimates.values())


def split_sizes(available_train: int, available_val: int, limit: int | None,
                val_fraction: float = 0.2) -> tuple[int, int]:
    """Training and validation images a run will use, as core.data.sources cuts them for a limit."""
    if not limit:
        return available_train, available_val
    return min(limit, available_train), min(validation_limit(limit, val_fraction), available_val)


def fits_memory(images: int, image_size: int) -> bool:
    """Whether core.data.sources.make_pipeline keeps this split's decoded images in memory after epoch 1."""
    return images * image_size * image_size * 3 * 4 <= DEFAULT_CACHE_BUDGET_BYTES


def keeps_in_memory(train_images: int, val_images: int, image_size: int) -> bool:
    """Whether both splits stay in memory after epoch 1, so later epochs decode nothing."""
    return fits_memory(train_images, image_size) and fits_memory(val_images, image_size)


def _redecode(train_images: int, val_images: int, image_size: int, decode: float) -> float:
    """Decoding in an epoch after the first: only a split too big to keep in memory is read again."""
    return (0 if fits_memory(train_images, image_size) else train_images * decode) + (
        0 if fits_memory(val_images, image_size) else val_images * decode)


def estimate(kind: ModelKind, speed: Speed, train_images: int, val_images: int, epochs: int,
             image_size: int, cache_features: bool = True, fine_tune_epochs: int = 0,
             observed: Observed | None = None) -> Estimate:
    """Extrapolate measured per-image costs to a whole run.

    cache_features is whether the run will use the feature cache (core.settings.config.uses_feature_cache: not
    with augmentation). fine_tune_epochs counts for the transfer model only and needs speed.fine_tune.
    observed (from observed_timing, for this setting) replaces the timed batches wherever finished runs
    measured the same part; the fine-tuning epochs always come from speed.
    """
    epochs = max(1, int(epochs))
    decode_all = (train_images + val_images) * speed.decode
    setup = speed.setup + OVERHEAD_SECONDS
    if spec(kind).has_backbone and cache_features:
        features = (train_images + val_images) * (speed.features + speed.decode)
        epoch = train_images * speed.head_train + val_images * speed.head_evaluate
        first = epoch
        setup = (speed.head_setup or speed.setup) + OVERHEAD_SECONDS
    else:
        features = 0.0
        compute = train_images * speed.train + val_images * speed.evaluate
        first = compute + decode_all
        epoch = compute + _redecode(train_images, val_images, image_size, speed.decode)
    if observed is not None:
        setup, features, first, epoch = _from_observed(observed, setup, features, first, epoch,
                                                       train_images, val_images, image_size)
    total = setup + features + first + (epochs - 1) * epoch
    fine_epochs = max(0, int(fine_tune_epochs)) if spec(kind).has_backbone else 0
    fine_total = fine_epoch = 0.0
    if fine_epochs:
        if speed.fine_tune <= 0:
            raise ValueError("fine-tuning epochs need speed.fine_tune; time it with measure_fine_tune")
        # The fine-tuning phase builds a new image pipeline, so its first epoch decodes every image again.
        compute = train_images * speed.fine_tune + val_images * speed.evaluate
        fine_epoch = compute + _redecode(train_images, val_images, image_size, speed.decode)
        fine_total = speed.fine_tune_setup + compute + decode_all + (fine_epochs - 1) * fine_epoch
    return Estimate(total + fine_total, setup, features, first, epoch, train_images, val_images, epochs,
                    fine_epochs, fine_total, fine_epoch, observed.runs if observed else 0)


def _from_observed(observed: Observed, setup: float, features: float, first: float, epoch: float,
                   train_images: int, val_images: int, image_size: int) -> tuple[float, float, float, float]:
    """(setup, features, first epoch, later epoch) seconds with what finished runs of the setting took.

    Epochs come from them only when this run keeps its images in memory as theirs did (otherwise every
    epoch decodes, at a cost they never paid); a later epoch they never had is the timed one, scaled by how
    the timed first epoch compared with theirs.
    """
    images = train_images + val_images
    if features and observed.features is not None:
        features = images * observed.features
    if observed.in_memory == keeps_in_memory(train_images, val_images, image_size):
        timed_first = first
        first = images * observed.first_epoch
        if observed.epoch is not None:
            epoch = images * observed.epoch
        elif timed_first > 0:
            epoch *= first / timed_first
    return observed.fixed, features, first, epoch


def timing_key(data, train) -> str:
    """The setting whose runs take alike per image: data source, model, image and batch size, backbone,
    whether features are cached and whether images are augmented (not the limit, epochs or seed)."""
    from core.settings.config import uses_feature_cache

    handle = (train.handle or "").strip() if spec(train.model).has_backbone else ""
    return json.dumps([data.source, train.model.value, data.image_size, data.batch_size, handle,
                       uses_feature_cache(data, train), bool(data.augment)])


def observation(run_dir: str | Path, wall_seconds: float) -> dict | None:
    """What one finished run took, from its folder and its wall time (opening its data to its evaluation).

    None for a run that cannot teach an estimate: stopped early, fine-tuned (its unfrozen epochs and their
    set-up are timed separately), or with unreadable files.
    """
    from core.runs.schema import RunSchemaError, load_run_json
    from core.settings.text import FINE_TUNE_PHASE

    try:
        config, history, metrics = load_run_json(Path(run_dir))
        size = int(config["data"].get("image_size", 0))
        n_train, n_val = int(metrics["train_images"]), int(metrics["val_images"])
        seconds = [float(row["seconds"]) for row in history]
    except (RunSchemaError, OSError, KeyError, TypeError, ValueError):
        return None
    images = n_train + n_val
    if (metrics.get("stopped_early") or not seconds or images <= 0 or config.get("parent")
            or any(row.get("phase") == FINE_TUNE_PHASE for row in history)):
        return None
    feature_seconds = float(metrics.get("feature_seconds") or 0.0)
    origins = set((metrics.get("feature_origin") or {}).values())
    return {
        "fixed": max(0.0, wall_seconds - sum(seconds) - feature_seconds),
        "first_epoch": seconds[0] / images,
        "epoch": statistics.median(seconds[1:]) / images if len(seconds) > 1 else None,
        "features": feature_seconds / images if origins == {"computed"} else None,
        "in_memory": keeps_in_memory(n_train, n_val, size),
        "at": time.time(),
    }


def record_timing(folder: str | Path, data, train, run_dir: str | Path, wall_seconds: float) -> None:
    """Add a finished run's costs to folder's timings file, for later estimates of the same setting.

    Updated under a lock, so processes finishing at once each keep their addition. A file that cannot be
    read is started afresh; one that cannot be written is left alone, and an estimate then falls back on
    timed batches.
    """
    seen = observation(run_dir, wall_seconds)
    if seen is None:
        return
    path = Path(folder) / TIMINGS_FILE
    key = timing_key(data, train)

    def add(recorded: dict) -> dict:
        timings = _well_formed_timings(recorded)
        runs = [*timings.pop(key, []), seen][-TIMINGS_KEPT:]
        timings[key] = runs  # a re-added key moves to the end: the least recently trained come first
        while len(timings) > TIMINGS_SETTINGS:
            timings.pop(next(iter(timings)))
        return timings

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        update_json(path, add, dict, max_bytes=TIMINGS_MAX_BYTES)
    except OSError as exc:
        logger.warning("could not record the run's timings in %s: %s", path, exc)


def observed_timing(folder: str | Path, data, train) -> Observed | None:
    """The medians of what the latest finished runs of this setting took here, or None if none finished."""
    runs = _read_timings(Path(folder) / TIMINGS_FILE).get(timing_key(data, train)) or []
    # Runs that differ in keeping images in memory differ in their epochs; the latest one decides.
    runs = [r for r in runs if r["in_memory"] == runs[-1]["in_memory"]] if runs else []
    if not runs:
        return None

    def median(name: str) -> float | None:
        values = [r[name] for r in runs if r.get(name) is not None]
        return statistics.median(values) if values else None

    return Observed(median("fixed"), median("first_epoch"), median("epoch"), median("features"),
                    runs[-1]["in_memory"], len(runs))


def _number(value) -> bool:
    return is_number(value) and 0 <= value < 1e6


def _well_formed(entry) -> bool:
    return (isinstance(entry, dict) and _number(entry.get("fixed")) and _number(entry.get("first_epoch"))
            and all(entry.get(k) is None or _number(entry.get(k)) for k in ("epoch", "features"))
            and isinstance(entry.get("in_memory"), bool))


def _read_timings(path: Path) -> dict[str, list[dict]]:
    """The timings file's settings, each with its well-formed entries only; {} when it cannot be read
    (missing, over TIMINGS_MAX_BYTES, nested too deep or not an object: read_json logs it once)."""
    return _well_formed_timings(read_json(path, dict, max_bytes=TIMINGS_MAX_BYTES) or {})


def _well_formed_timings(timings: dict) -> dict[str, list[dict]]:
    kept = {k: [e for e in v if _well_formed(e)] for k, v in timings.items() if isinstance(v, list)}
    return {k: v for k, v in kept.items() if v}


def quick_demo(budget_seconds: float, speeds: dict[ModelKind, Speed], available_train: int, available_val: int,
               image_size: int, cache_features: bool = True, val_fraction: float = 0.2,
               min_images: int = MIN_DEMO_IMAGES, fine_tune_epochs: int = 0, start_seconds: float = 0.0,
               observed: dict[ModelKind, Observed | None] | None = None) -> DemoPreset:
    """The largest shared training-image limit (and the most epochs) that runs both models within budget.

    Planned to PLAN_SHARE_OF_BUDGET of the budget, so an estimate that errs long still fits it.
    fine_tune_epochs are the transfer model's, kept as the user set them and counted in the budget;
    start_seconds (the worker process's start, core.training.board.worker_start_seconds) too, once.
    observed: each model's observed_timing, where finished runs of its setting took their time here.
    """
    observed = observed or {}
    floor = min(min_images, available_train)
    plan_seconds = budget_seconds * PLAN_SHARE_OF_BUDGET

    def run(limit: int, epochs: dict[ModelKind, int]) -> dict[ModelKind, Estimate]:
        n_train, n_val = split_sizes(available_train, available_val, limit, val_fraction)
        return {k: estimate(k, speeds[k], n_train, n_val, epochs[k], image_size, cache_features, fine_tune_epochs,
                            observed.get(k)) for k in speeds}

    def total(limit: int, epochs: dict[ModelKind, int]) -> float:
        return start_seconds + sum(e.total_seconds for e in run(limit, epochs).values())

    last = None
    for pair in EPOCH_FALLBACKS:
        epochs = {ModelKind.BASELINE: pair[0], ModelKind.TRANSFER: pair[1]}
        epochs = {k: min(v, spec(k).article_epochs) for k, v in epochs.items() if k in speeds}
        last = epochs
        if total(floor, epochs) > plan_seconds:
            continue
        lo, hi = floor, available_train  # total() grows with the limit: search the largest that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if total(mid, epochs) <= plan_seconds:
                lo = mid
            else:
                hi = mid - 1
        return DemoPreset(lo, epochs, run(lo, epochs), budget_seconds, True, start_seconds)
    return DemoPreset(floor, last, run(floor, last), budget_seconds, False, start_seconds)


def estimate_run(data, train, available_train: int, available_val: int, speed: Speed,
                 observed: Observed | None = None) -> Estimate:
    """The estimate of one experiment as configured, on a source with this many images."""
    from core.settings.config import uses_feature_cache

    used_train, used_val = split_sizes(available_train, available_val, data.limit, data.val_fraction)
    return estimate(train.model, speed, used_train, used_val, train.resolved_epochs, data.image_size,
                    uses_feature_cache(data, train), train.fine_tune_epochs, observed)


def _per_image(step, x, y, warmup: int, batches: int) -> float:
    """Seconds per image of step on one batch, the mean over batches: steps here alternate between fast ones
    and ones twice as long, and a run's epochs add up both kinds, so a median would promise too much."""
    for _ in range(warmup):
        step(x, y)
    start = time.perf_counter()
    for _ in range(batches):
        step(x, y)
    return (time.perf_counter() - start) / (batches * len(x))


def measure_speed(kind: ModelKind, image_size: int, batch_size: int, handle: str, num_classes: int = 2,
                  batches: int = 4, seed: int = 0) -> Speed:
    """Time the model's own steps on random pixels; raises LabError if the model cannot be built."""
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from core.models.architectures import build_model, compile_model
    from core.settings.paths import configure_caches

    configure_caches()
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    y = rng.integers(0, num_classes, size=batch_size)
    start = time.perf_counter()
    model = build_model(kind, num_classes, image_size, handle)
    compile_model(model, 1e-3)
    built = time.perf_counter() - start
    model.train_on_batch(x, y)
    model.test_on_batch(x, y)
    setup = time.perf_counter() - start
    train = _per_image(model.train_on_batch, x, y, 1, batches)
    evaluate = _per_image(model.test_on_batch, x, y, 0, batches)
    if not spec(kind).has_backbone:
        return Speed(train, evaluate, setup)
    backbone = model.layers[0]

    @tf.function(reduce_retracing=True)
    def call(images):
        return backbone(images, training=False)

    def forward(images, _labels):
        return call(images).numpy()

    features = _per_image(forward, x, y, 1, batches)
    feats = call(x).numpy()
    start = time.perf_counter()
    head = tf_keras.Sequential([tf_keras.Input(shape=feats.shape[1:]), tf_keras.layers.Dense(num_classes)])
    compile_model(head, 1e-3)
    head.train_on_batch(feats, y)
    head.test_on_batch(feats, y)
    head_setup = built + time.perf_counter() - start
    head_train = _per_image(head.train_on_batch, feats, y, 0, batches)
    head_evaluate = _per_image(head.test_on_batch, feats, y, 0, batches)
    return Speed(train, evaluate, setup, features, head_train, head_evaluate, head_setup=head_setup)


def measure_fine_tune(image_size: int, batch_size: int, handle: str, num_classes: int = 2, batches: int = 2,
                      seed: int = 0) -> tuple[float, float]:
    """(seconds per image, set-up seconds) of a transfer-model training step with the backbone unfrozen:
    a forward and a backward pass through the whole backbone, as core.training.experiment.fine_tune runs it."""
    import numpy as np

    from core.models.architectures import build_transfer, compile_model
    from core.settings.paths import configure_caches

    configure_caches()
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    y = rng.integers(0, num_classes, size=batch_size)
    model = build_transfer(num_classes, image_size, handle, trainable=True)
    # Training only recompiles the model it already has, so building it is not part of the set-up.
    start = time.perf_counter()
    compile_model(model, 1e-5)
    model.train_on_batch(x, y)
    setup = time.perf_counter() - start
    return _per_image(model.train_on_batch, x, y, 0, batches), setup


def measure_decode(source, image_size: int, batch_size: int, batches: int = 2) -> float:
    """Seconds per image to read, decode and resize images of an opened source (as training does)."""
    import tensorflow as tf

    from core.data.sources import TRAIN, preprocess

    def resize(image, label):
        return preprocess(image, image_size), label

    ds = source.examples(TRAIN, min_side=image_size).map(resize, num_parallel_calls=tf.data.AUTOTUNE)
    count, first, first_seconds, start = 0, 0, 0.0, time.perf_counter()
    for i, (x, _) in enumerate(ds.batch(batch_size).take(batches + 1)):
        if i == 0:
            # The first batch pays for starting the pipeline's threads; it only counts when it is all there is.
            first, first_seconds, start = int(x.shape[0]), time.perf_counter() - start, time.perf_counter()
            continue
        count += int(x.shape[0])
    if count:
        return (time.perf_counter() - start) / count
    return first_seconds / first if first else 0.0
