"""One experiment: open the data, build the model, fit with per-epoch reporting, write a run directory.

With a frozen hub backbone (the article's transfer model) and `cache_features` on, the backbone's outputs
are computed once per split and only the Dense head is fitted on them; the head layer is shared with the
full hub+Dense model, so what gets saved is the same kind of model as the uncached path produces.
"""
from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.data.sources import TRAIN, VALIDATION, make_pipeline, open_source
from core.runs.folders import RunWriter, disk_error, new_run_id
from core.runs.reload_check import RELOAD_CHECK_KEY
from core.settings.config import (
    DataConfig,
    TrainConfig,
    balanced_class_weights,
    data_from_dict,
    to_dict,
    total_epochs,
    train_from_dict,
    uses_feature_cache,
    validate,
)
from core.settings.errors import LabError, StopRequested
from core.settings.specs import spec
from core.settings.text import FINE_TUNE_PHASE, FROZEN_PHASE, TRAIN_PHASE

logger = logging.getLogger(__name__)

METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class EpochReport:
    epoch: int  # 1-based
    epochs: int
    metrics: dict  # loss, accuracy, val_loss, val_accuracy
    seconds: float


@dataclass(frozen=True)
class BatchReport:
    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based within the epoch
    steps: int
    seconds_in_epoch: float


@dataclass
class Callbacks:
    """How a caller follows a run: all optional, none of them may raise."""
    on_epoch: Callable[[EpochReport], None] | None = None
    on_batch: Callable[[BatchReport], None] | None = None
    on_status: Callable[[str], None] | None = None  # phase messages: loading data, extracting features
    should_stop: Callable[[], bool] | None = None  # polled after every batch

    def joined(self, other: Callbacks) -> Callbacks:
        """Both sets of callbacks: each report goes to self first, then other; either may stop the run."""
        def both(a, b):
            if a is None or b is None:
                return a or b
            return lambda report: (a(report), b(report))[-1]

        stops = [f for f in (self.should_stop, other.should_stop) if f is not None]
        return Callbacks(on_epoch=both(self.on_epoch, other.on_epoch), on_batch=both(self.on_batch, other.on_batch),
                         on_status=both(self.on_status, other.on_status),
                         should_stop=(lambda: any(f() for f in stops)) if stops else None)


@dataclass
class TrainResult:
    model: object
    history: list[dict]  # per epoch: loss, accuracy, val_loss, val_accuracy, seconds
    total_params: int
    trainable_params: int
    stopped_early: bool
    feature_seconds: float = 0.0  # time spent computing cached backbone features
    extra: dict = field(default_factory=dict)
    # (features, labels) of the validation split while the model's backbone is still the one that made
    # them (frozen, not fine-tuned afterwards): evaluation reuses them instead of running it again.
    validation_features: tuple | None = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def _keras_callback(epochs: int, steps: int, callbacks: Callbacks, history: list[dict]):
    import tf_keras

    class Reporter(tf_keras.callbacks.Callback):
        """Times each epoch, reports it, and turns a stop request into Keras's stop_training."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if callbacks.on_batch:
                callbacks.on_batch(BatchReport(len(history) + 1, epochs, batch + 1, steps,
                                               time.perf_counter() - self.start))
            if callbacks.should_stop and callbacks.should_stop():
                self.model.stop_training = True
                raise StopRequested()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.start
            row = {k: float(logs[k]) for k in METRIC_KEYS if k in logs}
            row["seconds"] = round(seconds, 3)
            history.append(row)
            if callbacks.on_epoch:
                callbacks.on_epoch(EpochReport(len(history), epochs, dict(row), seconds))

    return Reporter()


def fit(source, data: DataConfig, train: TrainConfig, callbacks: Callbacks | None = None, *,
        build: Callable[[], object] | None = None, earlier: list[dict] | None = None) -> TrainResult:
    """Train one model on an opened source. Raises StopRequested if stopped before any epoch finished.

    build, if given, makes the compiled model to continue training (a finished run's reloaded model.h5)
    instead of a new one; earlier is that run's history, which the new epochs extend.

    The model, its optimizer and the backbone's features are made under the tf.distribute strategy that
    train.strategy picks; data.batch_size is per replica, so the global batch grows with the replicas.
    result.extra["distribution"] records what was used.
    """
    import dataclasses

    from core.models.distribute import choose_precision, choose_strategy, describe, precision_policy

    validate(data, train)
    choice = choose_strategy(train.strategy)
    if choice.workers:
        from core.models.cluster import check_same_data

        check_same_data(choice.strategy, repr((source.info.class_names, source.info.counts)))
    precision = choose_precision(train.mixed_precision, choice, supported=not spec(train.model).has_backbone)
    global_batch = choice.global_batch_size(data.batch_size)
    if choice.replicas > 1 and global_batch > source.info.split_size(TRAIN):
        raise LabError(
            f"The global batch ({data.batch_size} per replica x {choice.replicas} replicas = {global_batch}) is "
            f"larger than the {source.info.split_size(TRAIN)} training images; use a smaller batch size or more images."
        )
    if callbacks and callbacks.on_status and (choice.kind != "default" or precision.note):
        callbacks.on_status(f"Strategy {choice.kind}: {choice.replicas} replica(s), global batch {global_batch}"
                            + (f"; {precision.note}" if precision.note else "") + ".")
    with choice.strategy.scope(), precision_policy(precision.mixed):
        result = _fit(source, dataclasses.replace(data, batch_size=global_batch), train, callbacks, build,
                      earlier or [])
    result.extra["distribution"] = describe(choice, data.batch_size, precision)
    return result


@dataclass
class _Features:
    """The backbone's outputs computed once per split, for the head to train on."""
    arrays: dict[str, tuple] = field(default_factory=dict)  # split -> (features, labels)
    origin: dict[str, str] = field(default_factory=dict)  # split -> "computed", "memory" or "disk"
    seconds: float = 0.0


def _new_or_reloaded_model(source, data: DataConfig, train: TrainConfig, build, status):
    """The compiled model to train: a new one, or build()'s (a finished run's, to continue), seeded."""
    import tf_keras

    from core.models.architectures import build_model, compile_model

    validate(data, train)
    if data.batch_size > source.info.split_size(TRAIN):
        raise LabError(
            f"Batch size {data.batch_size} is larger than the {source.info.split_size(TRAIN)} training images; "
            "use a smaller batch size or more images."
        )
    tf_keras.utils.set_random_seed(data.seed)
    if build is not None:
        status("Reloading the model and its optimizer state ...")
        return build()
    status("Building the model ...")
    # Fine-tuning unfreezes the backbone, so only a model that stays frozen may share this process's copy.
    model = build_model(train.model, source.info.num_classes, data.image_size, train.handle,
                        shared=not train.fine_tune_epochs)
    compile_model(model, train.learning_rate)
    return model


def _class_weights(source, train: TrainConfig) -> dict[int, float] | None:
    if not train.class_weight:
        return None
    by_name = balanced_class_weights(source.info.counts[TRAIN], source.info.class_names)
    return {k: by_name[name] for k, name in enumerate(source.info.class_names)}


def _fit_head(model, source, data: DataConfig, train: TrainConfig, callbacks: Callbacks, fit_args: dict,
              features: _Features) -> None:
    """Compute the frozen backbone's features of both splits once (into features), then fit the head on them."""
    import tf_keras

    from core.training.features import feature_batches, split_features

    start = time.perf_counter()
    backbone, head_layer = model.layers[0], model.layers[-1]
    for split in (TRAIN, VALIDATION):
        got = split_features(backbone, source, split, data, train.handle,
                             on_status=callbacks.on_status, should_stop=callbacks.should_stop)
        features.arrays[split] = (got.features, got.labels)
        features.origin[split] = got.origin
    features.seconds = time.perf_counter() - start
    head = tf_keras.Sequential([tf_keras.Input(shape=features.arrays[TRAIN][0].shape[1:]), head_layer])
    # The head shares the Dense layer and the optimizer with the full model, so training it
    # trains the full model's only trainable weights and leaves the optimizer state in place.
    head.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"])
    if callbacks.on_status:
        callbacks.on_status("Training the Dense head on the cached features ...")
    head.fit(feature_batches(*features.arrays[TRAIN], data.batch_size, seed=data.seed),
             validation_data=feature_batches(*features.arrays[VALIDATION], data.batch_size),
             shuffle=False, **fit_args)  # the batches shuffle themselves


def _fit_images(model, source, data: DataConfig, fit_args: dict, **epochs) -> None:
    model.fit(make_pipeline(source, TRAIN, data, training=True),
              validation_data=make_pipeline(source, VALIDATION, data, training=False), **fit_args, **epochs)


def _mark_phases(new_rows: list[dict], epochs: int, transfer: bool, unfrozen: bool) -> bool:
    """Record each new epoch's phase in its row; returns whether the last one was fine-tuned."""
    fine_tuned = False
    for i, row in enumerate(new_rows):
        fine_tuned = unfrozen or i >= epochs
        row["phase"] = (FINE_TUNE_PHASE if fine_tuned else FROZEN_PHASE) if transfer else TRAIN_PHASE
    return fine_tuned


def _extra(model, train: TrainConfig, features: _Features, before: int) -> dict:
    extra = {"feature_origin": features.origin} if features.origin else {}
    if train.fine_tune_epochs:
        extra["fine_tune_start_epoch"] = before + train.resolved_epochs + 1
    if before:
        extra["resumed_after_epoch"] = before
    if getattr(model, "optimizer", None) is not None:
        # Adam's step count: a resumed run's continues from its parent's, showing the state was carried over.
        extra["optimizer_steps"] = int(model.optimizer.iterations.numpy())
    return extra


def _fit(source, data: DataConfig, train: TrainConfig, callbacks: Callbacks | None, build, earlier: list[dict]
         ) -> TrainResult:
    """fit() inside the strategy's scope; data.batch_size is the global batch."""
    from core.data.sources import steps_per_epoch
    from core.models.architectures import param_counts

    callbacks = callbacks or Callbacks()
    status = callbacks.on_status or (lambda _msg: None)
    model = _new_or_reloaded_model(source, data, train, build, status)
    epochs, before = train.resolved_epochs, len(earlier)
    all_epochs = before + total_epochs(train)
    transfer = spec(train.model).has_backbone
    # A run resumed after fine-tuning has its backbone unfrozen, so its features change every step.
    unfrozen = transfer and model.layers[0].trainable
    history: list[dict] = [dict(row) for row in earlier]
    reporter = _keras_callback(all_epochs, steps_per_epoch(source, TRAIN, data.batch_size), callbacks, history)
    fit_args = {"verbose": 0, "callbacks": [reporter], "class_weight": _class_weights(source, train)}
    features, stopped = _Features(), False
    try:
        if uses_feature_cache(data, train) and not unfrozen:
            _fit_head(model, source, data, train, callbacks, fit_args | {"epochs": epochs}, features)
        else:
            status("Training ...")
            _fit_images(model, source, data, fit_args, epochs=epochs)
        if train.fine_tune_epochs and len(history) - before == epochs:
            status("Fine-tuning: the backbone is unfrozen ...")
            fine_tune(model, train)
            _fit_images(model, source, data, fit_args, initial_epoch=epochs, epochs=all_epochs)
    except StopRequested:
        stopped = True
    if len(history) == before:
        raise StopRequested()
    fine_tuned = _mark_phases(history[before:], epochs, transfer, unfrozen)
    total, trainable = param_counts(model)
    return TrainResult(model, history, total, trainable, stopped or len(history) < all_epochs, features.seconds,
                       _extra(model, train, features, before), None if fine_tuned else features.arrays.get(VALIDATION))


def fine_tune(model, train: TrainConfig) -> None:
    """Unfreeze the hub backbone and recompile with a small learning rate.

    Keras reads `trainable` when a model is compiled, so the change only takes effect after compiling
    again; a fresh optimizer keeps the head's large frozen-phase steps from hitting the backbone.
    The hub layer is one opaque module, so it is unfrozen whole: its inner layers cannot be reached.
    """
    from core.models.architectures import compile_model

    model.layers[0].trainable = True
    compile_model(model, train.fine_tune_learning_rate)


def run_model_label(train: TrainConfig) -> str:
    """The model's honest name: the transfer model is named after the backbone its handle loads."""
    from core.models.demo_backbone import backbone_name
    from core.models.hub import is_local, normalise_handle
    from core.settings.config import model_label

    if not spec(train.model).has_backbone:
        return model_label(train.model)
    try:
        handle = normalise_handle(train.handle)
    except LabError:
        handle = train.handle
    return model_label(train.model, handle, backbone_name(handle) if is_local(handle) else None)


def library_versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("tensorflow", "tf-keras", "tensorflow-hub", "tensorflow-datasets", "numpy", "pillow"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return versions


def save_run(result: TrainResult, source, data: DataConfig, train: TrainConfig, runs_dir: Path,
             extra_config: dict | None = None) -> Path:
    """Write the run directory atomically and return its final path."""
    from core.models.architectures import summary_rows, summary_text
    from core.safety.model_files import save_model

    try:
        writer = RunWriter(Path(runs_dir), new_run_id(train.model.value))
    except OSError as exc:
        raise disk_error(exc, "save the trained run", runs_dir) from None
    label = run_model_label(train)
    try:
        config = {
            "model_label": label,
            "data": to_dict(data), "train": to_dict(train), "epochs": train.resolved_epochs,
            "total_epochs": total_epochs(train), "feature_cache_used": bool(result.extra.get("feature_origin")),
            "class_names": source.info.class_names, "dataset": source.info.to_dict(),
            "versions": library_versions(), "machine": platform.machine(),
            "distribution": result.extra.get("distribution"), **(extra_config or {}),
        }
        if train.class_weight:
            config["class_weights"] = balanced_class_weights(source.info.counts[TRAIN], source.info.class_names)
        writer.json("config.json", config)
        writer.json("history.json", result.history)
        save_model(result.model, writer.path("model.h5"), source.info.class_names)
        reload = _reload_check(result.model, writer.path("model.h5"), source, data)
        writer.text("summary.txt", summary_text(result.model))
        writer.json("layers.json", [row.__dict__ for row in summary_rows(result.model)])
        vals = [row.get("val_accuracy", math.nan) for row in result.history]
        best_epoch = max(range(len(vals)), key=lambda i: vals[i]) + 1
        metrics = {
            "model": train.model.value,
            "model_label": label,
            "epochs_completed": len(result.history),
            "stopped_early": result.stopped_early,
            "final_val_accuracy": result.final.get("val_accuracy"),
            "final_val_loss": result.final.get("val_loss"),
            "best_val_accuracy": vals[best_epoch - 1],
            "best_epoch": best_epoch,
            "total_params": result.total_params,
            "trainable_params": result.trainable_params,
            "train_seconds": round(sum(r["seconds"] for r in result.history), 3),
            "feature_seconds": round(result.feature_seconds, 3),
            "seconds_per_epoch": round(sum(r["seconds"] for r in result.history) / len(result.history), 3),
            "train_images": source.info.split_size(TRAIN),
            "val_images": source.info.split_size(VALIDATION),
            "skipped_images": sum(source.info.skipped.values()) + source.runtime_skipped,
            "model_size_mb": round(writer.path("model.h5").stat().st_size / 1e6, 3),
            "finished_at": time.time(),
            RELOAD_CHECK_KEY: reload,
            **result.extra,  # where cached features came from; the epoch fine-tuning started at
        }
        writer.json("metrics.json", metrics)
        return writer.publish()
    except OSError as exc:
        writer.abandon()
        raise disk_error(exc, "save the trained run", runs_dir) from None
    except BaseException:
        writer.abandon()
        raise


def _reload_check(model, path: Path, source, data: DataConfig) -> dict:
    """The article's reload check on the freshly written model.h5; a failure is recorded, not raised,
    because the run itself is complete and its file may still load where the hub module is reachable."""
    from core.runs.reload_check import check_reload, validation_batch

    try:
        images = validation_batch(source, data.image_size)
        if images is None:
            return {"error": "no validation image could be read"}
        return check_reload(model, path, images)
    except LabError as exc:
        logger.warning("The reload check of %s failed: %s", path, exc)
        return {"error": str(exc)}


def run_experiment(data: DataConfig, train: TrainConfig, runs_dir: Path,
                   callbacks: Callbacks | None = None, evaluate: bool = True) -> Path:
    """Open the data, train, write the run directory and (unless told not to) evaluate the run on its
    validation split; returns the run directory's path."""
    from core.settings.paths import configure_caches

    configure_caches()
    validate(data, train)
    callbacks = callbacks or Callbacks()
    if callbacks.on_status:
        callbacks.on_status(f"Opening {data.source} ...")
    source = open_source(data, progress=callbacks.on_status)
    result = fit(source, data, train, callbacks)
    run_dir = save_run(result, source, data, train, runs_dir)
    if evaluate:
        _evaluate_saved(run_dir, result, source, callbacks)
    return run_dir


def _evaluate_saved(run_dir: Path, result: TrainResult, source, callbacks: Callbacks) -> None:
    from core.runs.evaluate import evaluate_run

    if callbacks.on_status:
        callbacks.on_status("Evaluating on the validation split ...")
    # A model built under MirroredStrategy or TPUStrategy only runs inside its replicas; its saved
    # file reloads as an ordinary model.
    distributed = (result.extra.get("distribution") or {}).get("kind", "default") != "default"
    try:
        evaluate_run(run_dir, model=None if distributed else result.model, source=source,
                     features=result.validation_features)
    except (LabError, OSError) as exc:
        # The run itself is complete and saved; its evaluation can be redone with `core evaluate`.
        logger.warning("Evaluation of %s failed: %s", run_dir, exc)


def resume_experiment(parent_dir: str | Path, epochs: int, runs_dir: Path, callbacks: Callbacks | None = None,
                      evaluate: bool = True) -> Path:
    """Continue a finished run for `epochs` more epochs and write the result as a new run.

    The model and its optimizer state (Adam's moments and step count) come from the run's model.h5, the
    dataset and settings from its config.json; the new run's history extends the parent's, and its
    config names the parent under "parent".
    """
    import dataclasses

    from core.runs.folders import open_run
    from core.safety.model_files import load_model
    from core.settings.paths import configure_caches

    configure_caches()
    parent = open_run(parent_dir)
    try:
        data = data_from_dict(parent.config.get("data", {}))
        train = dataclasses.replace(train_from_dict(parent.config.get("train", {})), epochs=epochs,
                                    fine_tune_epochs=0)
    except (TypeError, ValueError) as exc:
        raise LabError(f"The run '{parent.run_id}' has settings the Lab cannot read ({exc}); it cannot be "
                       "resumed.") from None
    validate(data, train)
    callbacks = callbacks or Callbacks()
    if callbacks.on_status:
        callbacks.on_status(f"Opening {data.source} ...")
    source = open_source(data, progress=callbacks.on_status)
    if source.info.class_names != parent.class_names:
        raise LabError(f"The dataset {data.source} now has the classes {source.info.class_names}, but the run "
                       f"was trained on {parent.class_names}; restore the dataset as it was to resume the run.")

    def reload():
        model, _info = load_model(parent.model_path)
        if getattr(model, "optimizer", None) is None:
            raise LabError(f"The model.h5 of '{parent.run_id}' was saved without its optimizer state, so "
                           "training cannot continue where it stopped; train a new run instead.")
        return model

    result = fit(source, data, train, callbacks, build=reload, earlier=parent.history)
    record = {"run_id": parent.run_id, "path": str(parent.path), "epochs": len(parent.history)}
    run_dir = save_run(result, source, data, train, runs_dir,
                       extra_config={"parent": record, "total_epochs": len(result.history)})
    if evaluate:
        _evaluate_saved(run_dir, result, source, callbacks)
    return run_dir
