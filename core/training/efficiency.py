"""Data efficiency: validation accuracy of both models when each learns from only N images per class.

The article's lesson in one chart: a pretrained backbone needs far fewer examples. For each count the
baseline CNN is trained from scratch on that many training images per class, and the transfer model's
Dense head on the frozen backbone's features of the same images; both are scored on the whole validation
split. The backbone runs once: the training images' features are computed a single time and sliced per
count, and the validation split's come from the feature cache (core.training.features), so the transfer
side costs seconds even with the real MobileNetV2. Works for any source and any hub handle.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.settings.config import ARTICLE_EPOCHS, DataConfig, ModelKind, TrainConfig, validate
from core.settings.errors import LabError, StopRequested

logger = logging.getLogger(__name__)

DEFAULT_COUNTS = (5, 10, 20, 40, 80)


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
    images = np.stack([kept[c][i] for i, c in order]).astype(np.float32)
    labels = np.array([c for _, c in order], np.int64)
    ranks = np.array([i for i, _ in order])
    return images, labels, ranks


def data_efficiency(data: DataConfig, handle: str, counts: Sequence[int] = DEFAULT_COUNTS,
                    epochs: dict[ModelKind, int] | None = None, learning_rate: float = 1e-3,
                    on_status: Callable[[str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> EfficiencyResult:
    """Train both models at each count of training images per class; validation accuracy per count.

    epochs defaults to the article's (15 for the baseline, 3 for the transfer head); data.batch_size,
    data.image_size and data.seed apply to every training. data.limit is ignored: the counts are the limit.
    """
    import tf_keras

    from core.data.sources import VALIDATION, make_pipeline, open_source
    from core.models.architectures import build_baseline, build_transfer, compile_model
    from core.settings.paths import configure_caches
    from core.training.experiment import run_model_label
    from core.training.features import extract_features, feature_batches, split_features

    counts = sorted({int(c) for c in counts})
    if not counts or counts[0] < 1:
        raise LabError("Give at least one count of training images per class, each 1 or more.")
    epochs = {**ARTICLE_EPOCHS, **(epochs or {})}
    status = on_status or (lambda _msg: None)
    stop = should_stop or (lambda: False)
    configure_caches()
    data = dataclasses.replace(data, limit=None)
    for kind in ModelKind:
        validate(data, TrainConfig(model=kind, epochs=epochs[kind], learning_rate=learning_rate, handle=handle))
    status(f"Opening {data.source} ...")
    source = open_source(data, progress=on_status)
    classes = source.info.num_classes
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
        chosen = ranks < count
        n = int(chosen.sum())
        for kind in (ModelKind.MOBILENET_V2, ModelKind.BASELINE):
            status(f"{count} images per class: training the {'transfer head' if kind is ModelKind.MOBILENET_V2 else 'baseline CNN'} ...")
            tf_keras.utils.set_random_seed(data.seed)
            batch = min(data.batch_size, n)
            if kind is ModelKind.MOBILENET_V2:
                head = tf_keras.Sequential([tf_keras.Input(shape=train_features.shape[1:]),
                                            tf_keras.layers.Dense(classes, dtype="float32")])
                compile_model(head, learning_rate)
                head.fit(feature_batches(train_features[chosen], labels[chosen], batch, seed=data.seed),
                         epochs=epochs[kind], shuffle=False, verbose=0)
                accuracy = head.evaluate(val_batches, verbose=0)[1]
            else:
                model = build_baseline(classes, data.image_size)
                compile_model(model, learning_rate)
                model.fit(images[chosen], labels[chosen], batch_size=batch, epochs=epochs[kind], shuffle=True,
                          verbose=0)
                accuracy = model.evaluate(val_pipeline, verbose=0)[1]
            points.append(EfficiencyPoint(kind, count, n, float(accuracy)))
    train = TrainConfig(model=ModelKind.MOBILENET_V2, handle=handle)
    return EfficiencyResult(points, {ModelKind.BASELINE: run_model_label(TrainConfig(model=ModelKind.BASELINE)),
                                     ModelKind.MOBILENET_V2: run_model_label(train)},
                            len(val.labels), {k: epochs[k] for k in ModelKind}, list(source.info.class_names))


def _as_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int):
    import tensorflow as tf

    from core.data.sources import without_autotune

    return without_autotune(tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size))
