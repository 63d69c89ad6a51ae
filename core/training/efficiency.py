"""Data efficiency: validation accuracy of both models when each learns from only N images per class.

The article's lesson in one chart: a pretrained backbone needs far fewer examples. For each count the
baseline CNN is trained from scratch on that many training images per class, and the transfer model's
Dense head on the frozen backbone's features of the same images; both are scored on the whole validation
split. The backbone runs once: the training images' features are computed a single time and sliced per
count, and the validation split's come from the feature cache (core.training.features), so the transfer
side costs seconds even with the real MobileNetV2. Works for any source and any hub handle.

The dashboard measures as a job of the board (core.training.board), in a worker process like a training:
it has a place in the queue, a Stop button and a link, and its result is kept in the job's folder.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.settings.config import ARTICLE_EPOCHS, DataConfig, ModelKind, TrainConfig, validate
from core.settings.errors import LabError, StopRequested
from core.settings.presets import Preset, apply_efficiency_preset, check_efficiency_images

logger = logging.getLogger(__name__)

DEFAULT_COUNTS = (5, 10, 20, 40, 80)

RESULT_FILE = "efficiency.json"  # in the job's folder: what the page draws once the job is done
TASK = "efficiency"  # the kind of a board job that measures (core.training.board keeps it in the job's spec)


@dataclass(frozen=True)
class EfficiencyPoint:
    model: ModelKind
    per_class: int  # training images per class asked for
    train_images: int  # training images used (fewer when a class has fewer)
    val_accuracy: float


@dataclass(frozen=True)
class EfficiencyResult:
    points: list[EfficiencyPoint]
    labels: dict[ModelKind, str]  # each model's honest name (the transfer model's after its backbone)
    val_images: int
    epochs: dict[ModelKind, int]
    class_names: list[str]

    def accuracies(self, kind: ModelKind) -> list[tuple[int, float]]:
        """(images per class, validation accuracy) for one model, by count."""
        return sorted((p.per_class, p.val_accuracy) for p in self.points if p.model is kind)


def _pick_per_class(source, data: DataConfig, most: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `most` training images of each class in a seeded shuffle: float32 images in [0, 1],
    labels, and each image's rank within its class.

    Every count takes a prefix of each class's list, so 20 per class holds the 10 per class plus 10 more.
    """
    from core.data.sources import TRAIN, preprocess

    kept: dict[int, list] = {c: [] for c in range(classes)}
    for image, label in source.examples(TRAIN, shuffle_seed=data.seed, min_side=data.image_size):
        bucket = kept[int(label)]
        if len(bucket) < most:
            bucket.append(preprocess(image, data.image_size).numpy())
        if all(len(b) >= most for b in kept.values()):
            break
    order = [(i, c) for i in range(most) for c in range(classes) if i < len(kept[c])]
    images = np.stack([kept[c][i] for i, c in order]).astype(np.float32, copy=False)  # no second copy
    labels = np.array([c for _, c in order], np.int64)
    ranks = np.array([i for i, _ in order])
    return images, labels, ranks


def data_efficiency(data: DataConfig, handle: str, counts: Sequence[int] = DEFAULT_COUNTS,
                    epochs: dict[ModelKind, int] | None = None, learning_rate: float = 1e-3,
                    on_status: Callable[[str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, preset: Preset | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> EfficiencyResult:
    """Train both models at each count of training images per class; validation accuracy per count.

    epochs defaults to the article's (15 for the baseline, 3 for the transfer head); data.batch_size,
    data.image_size and data.seed apply to every training. data.limit is ignored: the counts are the limit.

    preset, when given (the web page gives the active one), applies its caps before anything is read or
    trained: data source, batch, image size and epochs (core.settings.presets.apply_efficiency_preset), the
    hub handle where it allows no server paths, then the training images held (check_efficiency_images, once
    the classes are known). None, as on the command line: no caps. on_progress(done, total) follows the
    trainings (two per count).
    """
    from core.settings.paths import configure_caches

    configure_caches()
    data, counts, epochs, shown_source = checked_settings(data, handle, counts, epochs, learning_rate, preset)
    return _measure(data, handle, counts, epochs, learning_rate, on_status, should_stop, preset, shown_source,
                    on_progress or (lambda done, total: None))


def checked_settings(data: DataConfig, handle: str, counts: Sequence[int], epochs: dict[ModelKind, int] | None,
                     learning_rate: float = 1e-3, preset: Preset | None = None
                     ) -> tuple[DataConfig, list[int], dict[ModelKind, int], str]:
    """data_efficiency's settings checked and capped, before anything is read: (data, counts, epochs, the
    source as a page may show it). LabError says what is wrong; a page checks this before it queues."""
    counts = sorted({int(c) for c in counts})
    if not counts or counts[0] < 1:
        raise LabError("Give at least one count of training images per class, each 1 or more.")
    epochs = {**ARTICLE_EPOCHS, **(epochs or {})}
    data = dataclasses.replace(data, limit=None)
    for kind in ModelKind:
        validate(data, TrainConfig(model=kind, epochs=epochs[kind], learning_rate=learning_rate, handle=handle))
    shown_source = data.source
    if preset is not None:
        apply_efficiency_preset(data, epochs.values(), preset)
        if not preset.allow_local_paths:
            from core.models.hub import check_web_handle
            from core.settings.text import dataset_name

            check_web_handle(handle)  # as the Experiments page checks its handle field
            shown_source = dataset_name(data.source)  # the status line is shown on the page
    return data, counts, epochs, shown_source


def _measure(data: DataConfig, handle: str, counts: list[int], epochs: dict[ModelKind, int], learning_rate: float,
             on_status: Callable[[str], None] | None, should_stop: Callable[[], bool] | None, preset: Preset | None,
             shown_source: str, on_progress: Callable[[int, int], None]) -> EfficiencyResult:
    """data_efficiency's work, once its settings are checked."""
    import tf_keras

    from core.data.sources import VALIDATION, make_pipeline, open_source
    from core.models.architectures import build_baseline, build_transfer, compile_model
    from core.training.experiment import run_model_label
    from core.training.features import extract_features, feature_batches, split_features

    status = on_status or (lambda _msg: None)
    stop = should_stop or (lambda: False)
    status(f"Opening {shown_source} ...")
    source = open_source(data, progress=on_status)
    classes = source.info.num_classes
    if preset is not None:
        check_efficiency_images(counts[-1], classes, preset)
    status(f"Reading up to {counts[-1]} training images per class ...")
    images, labels, ranks = _pick_per_class(source, data, counts[-1], classes)

    status("Computing the frozen backbone's features once ...")
    transfer = build_transfer(classes, data.image_size, handle)
    backbone = transfer.layers[0]
    train_features = extract_features(backbone, _as_dataset(images, labels, data.batch_size), data.image_size)[0]
    val = split_features(backbone, source, VALIDATION, data, handle, on_status=on_status, should_stop=should_stop)
    val_batches = feature_batches(val.features, val.labels, data.batch_size)
    val_pipeline = make_pipeline(source, VALIDATION, data, training=False)

    points = []
    for count in counts:
        if stop():
            raise StopRequested()
        # ranks never decrease (_pick_per_class orders by rank), so a count's images are a prefix: a view of
        # the arrays, where a boolean selection would copy every chosen image once more.
        n = int((ranks < count).sum())
        for kind in (ModelKind.TRANSFER, ModelKind.BASELINE):
            on_progress(len(points), 2 * len(counts))
            status(f"{count} images per class: training the {'transfer head' if kind is ModelKind.TRANSFER else 'baseline CNN'} ...")
            tf_keras.utils.set_random_seed(data.seed)
            batch = min(data.batch_size, n)
            if kind is ModelKind.TRANSFER:
                head = tf_keras.Sequential([tf_keras.Input(shape=train_features.shape[1:]),
                                            tf_keras.layers.Dense(classes, dtype="float32")])
                compile_model(head, learning_rate)
                head.fit(feature_batches(train_features[:n], labels[:n], batch, seed=data.seed),
                         epochs=epochs[kind], shuffle=False, verbose=0)
                accuracy = head.evaluate(val_batches, verbose=0)[1]
            else:
                model = build_baseline(classes, data.image_size)
                compile_model(model, learning_rate)
                model.fit(images[:n], labels[:n], batch_size=batch, epochs=epochs[kind], shuffle=True,
                          verbose=0)
                accuracy = model.evaluate(val_pipeline, verbose=0)[1]
            points.append(EfficiencyPoint(kind, count, n, float(accuracy)))
    train = TrainConfig(model=ModelKind.TRANSFER, handle=handle)
    return EfficiencyResult(points, {ModelKind.BASELINE: run_model_label(TrainConfig(model=ModelKind.BASELINE)),
                                     ModelKind.TRANSFER: run_model_label(train)},
                            len(val.labels), {k: epochs[k] for k in ModelKind}, list(source.info.class_names))


def result_to_dict(result: EfficiencyResult) -> dict:
    return {"points": [{"model": p.model.value, "per_class": p.per_class, "train_images": p.train_images,
                        "val_accuracy": p.val_accuracy} for p in result.points],
            "labels": {k.value: v for k, v in result.labels.items()}, "val_images": result.val_images,
            "epochs": {k.value: v for k, v in result.epochs.items()}, "class_names": result.class_names}


def result_from_dict(d: dict) -> EfficiencyResult:
    """The result a job saved; LabError when the file does not hold one."""
    try:
        return EfficiencyResult(
            [EfficiencyPoint(ModelKind(p["model"]), int(p["per_class"]), int(p["train_images"]),
                             float(p["val_accuracy"])) for p in d["points"]],
            {ModelKind(k): str(v) for k, v in d["labels"].items()}, int(d["val_images"]),
            {ModelKind(k): int(v) for k, v in d["epochs"].items()}, [str(n) for n in d["class_names"]])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LabError(f"The measurement's result could not be read ({exc.__class__.__name__}).") from None


def board_runner(task: dict, job_dir: Path):
    """A board job's runner (core.training.jobs.Runner) that measures instead of training: it saves no run,
    and leaves the result in the job's folder. The active preset's caps apply, as on the page."""
    from core.settings.files import write_json
    from core.settings.presets import active_preset
    from core.training.experiment import BatchReport

    def run(data: DataConfig, train: TrainConfig, runs_dir, callbacks) -> None:
        def progress(done: int, total: int) -> None:
            if callbacks.on_batch:
                callbacks.on_batch(BatchReport(done + 1, total, 0, 1, 0.0))

        result = data_efficiency(data, train.handle, task["counts"], {ModelKind.BASELINE: int(task["baseline_epochs"])},
                                 train.learning_rate, on_status=callbacks.on_status, should_stop=callbacks.should_stop,
                                 preset=active_preset(), on_progress=progress)
        write_json(job_dir / RESULT_FILE, result_to_dict(result))

    return run


def _as_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int):
    import tensorflow as tf

    from core.data.sources import without_autotune

    return without_autotune(tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size))
