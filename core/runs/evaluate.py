"""Evaluation of a finished run on its validation split: confusion matrix, per-class metrics, worst mistakes.

The metrics are plain numpy, checked on known labellings. `evaluate_run` stores evaluation.json and the
mistakes' thumbnails in the run folder; `load_evaluation` reads them back without TensorFlow or the dataset.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from core.data.images import decode_image
from core.data.sources import VALIDATION, FolderSource, preprocess, without_autotune
from core.runs.folders import open_run
from core.runs.schema import RunSchemaError, load_json
from core.safety.model_files import load_model
from core.settings.config import EXTRACT_BATCH_SIZE, data_from_dict
from core.settings.errors import ImageError, LabError
from core.settings.presets import check_source

logger = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
THUMBNAIL_DIR = "evaluation"
FORMAT_VERSION = 1
DEFAULT_MAX_WRONG = 12
THUMBNAIL_SIDE = 128  # big enough to recognise the image in a gallery, small enough to keep many

# Called after every batch with (images evaluated so far, images in the split).
Progress = Callable[[int, int], None]


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} true labels but {y_pred.size} predictions")
    for name, values in (("true", y_true), ("predicted", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes}); got {values.min()}..{values.max()}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def row_percentages(matrix: np.ndarray) -> np.ndarray:
    """Each cell as a percentage of its row (its true class); NaN for a class with no images."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * matrix / totals, np.nan)


def overall_accuracy(matrix: np.ndarray) -> float:
    matrix = np.asarray(matrix)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else math.nan


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


@dataclass(frozen=True)
class ClassMetrics:
    """One class's figures. None marks a ratio with nothing to divide by (e.g. precision of a class
    that was never predicted).

    accuracy is one-vs-rest: the share of all images for which "is it this class?" was answered right.
    recall is the share of this class's own images that were classified as it.
    f1 is the harmonic mean of precision and recall: 0.0 when either is 0 or undefined while the class
    has images, None only for a class with neither images nor predictions.
    """
    name: str
    precision: float | None
    recall: float | None
    accuracy: float | None
    support: int  # validation images of this class
    predicted: int  # images the model assigned to this class
    f1: float | None = None


def f1_score(tp: int, support: int, predicted: int) -> float | None:
    """2·TP / (images of the class + images predicted as it), the same as 2PR / (P + R) where both exist."""
    return _ratio(2 * tp, support + predicted)


class MacroAverages(NamedTuple):
    """Unweighted means over the classes, every class counting once whatever its size, as sklearn's
    "macro" average with zero_division=0: a class with neither images nor predictions is left out, an
    undefined precision or recall of any other class counts as 0."""
    precision: float
    recall: float
    f1: float


def macro_averages(per_class: list[ClassMetrics]) -> MacroAverages:
    seen = [m for m in per_class if m.support or m.predicted]

    def mean(values) -> float:
        values = [0.0 if v is None else v for v in values]
        return float(sum(values) / len(values)) if values else math.nan

    return MacroAverages(mean(m.precision for m in seen), mean(m.recall for m in seen), mean(m.f1 for m in seen))


def per_class_metrics(matrix: np.ndarray, class_names: list[str]) -> list[ClassMetrics]:
    matrix = np.asarray(matrix, dtype=np.int64)
    if matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(f"a {matrix.shape} matrix does not fit {len(class_names)} class names")
    total = int(matrix.sum())
    out = []
    for k, name in enumerate(class_names):
        tp = int(matrix[k, k])
        support = int(matrix[k].sum())
        predicted = int(matrix[:, k].sum())
        tn = total - support - predicted + tp
        out.append(ClassMetrics(name, _ratio(tp, predicted), _ratio(tp, support), _ratio(tp + tn, total),
                                support, predicted, f1_score(tp, support, predicted)))
    return out


@dataclass(frozen=True)
class WrongPrediction:
    thumbnail: Path  # PNG of what the model saw (the resized input), inside the run folder
    true_label: str
    predicted_label: str
    confidence: float  # probability of the predicted (wrong) class
    true_probability: float  # probability the model gave the right class
    source: str  # the image file (relative to the dataset folder) for folder datasets, else its split position


@dataclass(frozen=True)
class Evaluation:
    run_dir: Path
    class_names: list[str]
    matrix: list[list[int]]  # [true class][predicted class] counts
    row_percentages: list[list[float | None]]  # same shape; None for a class with no images
    per_class: list[ClassMetrics]
    accuracy: float
    images: int  # validation images evaluated
    skipped: int  # validation images that could not be read
    wrong: list[WrongPrediction]  # most confident mistakes first
    seconds: float
    evaluated_at: float
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def macro(self) -> MacroAverages:
        return macro_averages(self.per_class)

    @property
    def errors(self) -> int:
        return self.images - sum(self.matrix[k][k] for k in range(self.num_classes))

    def to_dict(self) -> dict:
        """Every field but run_dir, in order; thumbnails relative to the run folder, which travels in zips."""
        out = {"version": FORMAT_VERSION, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)[1:]}}
        out["per_class"] = [vars(m) for m in self.per_class]
        out["wrong"] = [{**vars(w), "thumbnail": w.thumbnail.relative_to(self.run_dir).as_posix()} for w in self.wrong]
        return out

    @classmethod
    def from_dict(cls, run_dir: Path, d: dict) -> Evaluation:
        run_dir = Path(run_dir)
        return cls(
            run_dir=run_dir,
            class_names=list(d["class_names"]),
            matrix=[[int(v) for v in row] for row in d["matrix"]],
            row_percentages=[[None if v is None else float(v) for v in row] for row in d["row_percentages"]],
            per_class=[_class_metrics(m) for m in d["per_class"]],
            accuracy=float(d["accuracy"]),
            images=int(d["images"]),
            skipped=int(d.get("skipped", 0)),
            wrong=[WrongPrediction(**{**w, "thumbnail": run_dir / w["thumbnail"]}) for w in d["wrong"]],
            seconds=float(d.get("seconds", 0.0)),
            evaluated_at=float(d.get("evaluated_at", 0.0)),
            notes=list(d.get("notes", [])),
        )


def _class_metrics(stored: dict) -> ClassMetrics:
    """A stored class's figures; evaluations saved before F1 was recorded get it from the same counts."""
    m = ClassMetrics(**stored)
    if m.f1 is None and (m.support or m.predicted):
        tp = round(m.recall * m.support) if m.recall is not None else 0
        m = dataclasses.replace(m, f1=f1_score(tp, m.support, m.predicted))
    return m


def load_evaluation(run_dir: str | Path) -> Evaluation | None:
    """The stored evaluation of a run, or None if it has not been evaluated yet."""
    run_dir = Path(run_dir)
    path = run_dir / EVALUATION_FILE
    if not path.is_file():
        return None
    try:
        evaluation = Evaluation.from_dict(run_dir, load_json(path))
        root = run_dir.resolve()
        # The gallery opens every thumbnail named here: only files inside the run folder, never the server's.
        if not all(w.thumbnail.resolve().is_relative_to(root) for w in evaluation.wrong):
            raise ValueError("a thumbnail outside the run folder")
        return evaluation
    except RunSchemaError as exc:
        raise LabError(f"{path} is damaged ({exc}); evaluate the run again to replace it.") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LabError(
            f"{path} is damaged ({exc.__class__.__name__}); evaluate the run again to replace it."
        ) from None


def _outputs_probabilities(model) -> bool:
    try:
        return model.layers[-1].get_config().get("activation") == "softmax"
    except (AttributeError, IndexError):
        return False


def _split_names(source) -> list[str] | None:
    """What the gallery calls each validation image, by position: its file, relative to the dataset folder
    (evaluation.json travels in run zips; server paths must not), for folder datasets."""
    if not isinstance(source, FolderSource):
        return None
    return [Path(p).relative_to(source.root).as_posix() if Path(p).is_relative_to(source.root) else Path(p).name
            for p, _ in source.files[VALIDATION]]


def _validation_batches(source, image_size: int, batch_size: int):
    """Batches of (images, labels, positions in the split), in split order, unreadable files dropped."""
    import tensorflow as tf

    if isinstance(source, FolderSource):
        files = source.files[VALIDATION]
        paths = [str(p) for p, _ in files]

        def load(path: bytes) -> np.ndarray:
            try:
                return decode_image(Path(path.decode()).read_bytes(), path.decode(), min_side=image_size)
            except (ImageError, OSError):
                return np.zeros((0, 0, 3), np.uint8)

        def decode(path, label, position):
            image = tf.numpy_function(load, [path], tf.uint8, stateful=False)
            image.set_shape([None, None, 3])
            return image, label, position

        ds = tf.data.Dataset.from_tensor_slices((
            tf.constant(paths), tf.constant([label for _, label in files], tf.int64),
            tf.range(len(files), dtype=tf.int64)))
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        ds = without_autotune(ds.filter(lambda image, _y, _i: tf.shape(image)[0] > 0))
    else:
        ds = source.examples(VALIDATION).enumerate().map(lambda i, ex: (ex[0], ex[1], i))
    ds = ds.map(lambda x, y, i: (preprocess(x, image_size), y, i), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _thumbnail(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    img = Image.fromarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8))
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    img.save(path, "PNG")


def _images_at(source, image_size: int, positions: set[int]) -> dict[int, np.ndarray]:
    """The model's inputs (resized, [0, 1]) of a few validation images, by position in the split: what the
    gallery shows when predictions came from cached features and no image went through the model."""
    import tensorflow as tf

    if not positions:
        return {}
    if isinstance(source, FolderSource):
        files = source.files[VALIDATION]
        return {i: preprocess(decode_image(files[i][0].read_bytes(), str(files[i][0]), min_side=image_size),
                              image_size).numpy() for i in positions}
    wanted = tf.constant(sorted(positions), tf.int64)
    ds = source.examples(VALIDATION).enumerate()
    ds = ds.filter(lambda i, _ex: tf.reduce_any(tf.equal(wanted, i)))
    return {int(i): preprocess(x, image_size).numpy() for i, (x, _y) in ds}


def _feature_rows(source, image_size: int, rows: int) -> np.ndarray | None:
    """Each cached feature row's position in the validation split, or None if they cannot be matched.

    Extraction drops images that fail to decode, so rows and positions part ways after the first one;
    only then are the images decoded once more (no model) to learn which ones those were.
    """
    if rows == source.info.split_size(VALIDATION):
        return np.arange(rows)
    if not isinstance(source, FolderSource):
        return None
    batches = _validation_batches(source, image_size, 256)
    positions = np.concatenate([p.numpy() for _x, _y, p in batches])
    return positions if len(positions) == rows else None


def _head_probabilities(model, features: np.ndarray, softmax: bool) -> np.ndarray:
    """Probabilities from the layers after the backbone, applied to the backbone's cached outputs."""
    import tensorflow as tf

    out = tf.constant(features)
    for layer in model.layers[1:]:
        out = layer(out, training=False)
    return (out if softmax else tf.nn.softmax(out)).numpy()


class _WorstMistakes:
    """The most confidently wrong predictions so far, most confident first, as (confidence, position in the
    split, true class, predicted class, true class's probability, the model's input image or None)."""

    def __init__(self, keep: int):
        self.keep, self.rows = keep, []

    def add(self, probs: np.ndarray, labels: np.ndarray, positions, images=None) -> np.ndarray:
        """Keep this batch's worst mistakes; returns its predicted classes."""
        preds = probs.argmax(axis=1)
        for j in np.flatnonzero(preds != labels):
            self.rows.append((float(probs[j, preds[j]]), int(positions[j]), int(labels[j]), int(preds[j]),
                              float(probs[j, labels[j]]), None if images is None else images[j].numpy()))
        self.rows.sort(key=lambda c: c[0], reverse=True)
        del self.rows[self.keep:]
        return preds


def _open_for_evaluation(run_dir, model, source):
    """(run, its data settings, source, model, whether the model outputs probabilities, notes), each checked
    against the run: the model and source are reopened unless training hands them over."""
    from core.data.sources import open_source

    run = open_run(run_dir)
    data = data_from_dict(run.config.get("data", {}))
    if source is None:
        # The run may come from another machine: what it names obeys this server's preset, like a visitor's input.
        check_source(data.source)
        source = open_source(data)
    if model is None:
        model, info = load_model(run.model_path)
        softmax = info.softmax_output
    else:
        softmax = _outputs_probabilities(model)
    if source.info.class_names != run.class_names:
        raise LabError(
            f"The dataset {data.source} now has the classes {source.info.class_names}, but the run was trained "
            f"on {run.class_names}; restore the dataset as it was to evaluate this run."
        )
    if model.output_shape[-1] != len(run.class_names):
        raise LabError(f"The run's model has {model.output_shape[-1]} outputs but the run lists "
                       f"{len(run.class_names)} classes; the run folder is inconsistent.")
    notes = []
    trained_counts = run.config.get("dataset", {}).get("counts", {}).get(VALIDATION)
    if trained_counts and trained_counts != source.info.counts[VALIDATION]:
        notes.append("The dataset has changed since training, so the validation split is not exactly the one "
                     "the run was validated on.")
    return run, data, source, model, softmax, notes


def _predict_features(model, softmax: bool, source, image_size: int, features, rows, worst: _WorstMistakes):
    """(true, predicted) classes from the backbone's cached outputs; only the gallery's images are decoded."""
    labels = np.asarray(features[1])
    preds = worst.add(_head_probabilities(model, np.asarray(features[0]), softmax), labels, rows)
    shown = _images_at(source, image_size, {c[1] for c in worst.rows})
    worst.rows = [(*c[:5], shown[c[1]]) for c in worst.rows]
    return labels, preds


def _predict_images(model, softmax: bool, source, data, worst: _WorstMistakes, progress: Progress | None):
    """(true, predicted) classes of every readable validation image, run through the whole model."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, data.image_size, data.image_size, 3], tf.float32)])
    def predict(x):
        out = model(x, training=False)
        return out if softmax else tf.nn.softmax(out)

    # Small batches, as for feature extraction: a large batch's activations would set the run's peak memory,
    # and evaluation speed barely depends on the batch.
    batches = _validation_batches(source, data.image_size, min(data.batch_size, EXTRACT_BATCH_SIZE))
    y_true, y_pred = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for x, y, positions in batches:
        labels = y.numpy()
        y_true.append(labels)
        y_pred.append(worst.add(predict(x).numpy(), labels, positions.numpy(), x))
        if progress:
            progress(sum(map(len, y_true)), source.info.split_size(VALIDATION))
    return np.concatenate(y_true), np.concatenate(y_pred)


def _store(evaluation: Evaluation, mistakes: list[tuple], names: list[str] | None, start: float) -> Evaluation:
    """Write the mistakes' thumbnails, then evaluation.json naming them; returns the evaluation as stored.

    Each evaluation gets its own thumbnail folder, so a reader of the previous evaluation.json never finds
    its thumbnails replaced by another evaluation's images half-way; the older folders go afterwards.
    """
    from core.runs.folders import disk_error, write_json

    run_dir, class_names = evaluation.run_dir, evaluation.class_names
    thumbs_root = run_dir / THUMBNAIL_DIR
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    thumbs = thumbs_root / stamp
    wrong = []
    try:
        thumbs.mkdir(parents=True)
        for rank, (confidence, position, true, pred, true_prob, image) in enumerate(mistakes):
            path = thumbs / f"wrong_{rank:03d}.png"
            _thumbnail(image, path)
            wrong.append(WrongPrediction(path, class_names[true], class_names[pred], confidence, true_prob,
                                         names[position] if names else f"{VALIDATION} image #{position}"))
        evaluation = dataclasses.replace(evaluation, wrong=wrong, seconds=round(time.perf_counter() - start, 3),
                                         evaluated_at=time.time())
        write_json(run_dir / EVALUATION_FILE, evaluation.to_dict())
    except OSError as exc:
        # The previous evaluation (if any) stays whole: its file and thumbnails are only replaced after this.
        shutil.rmtree(thumbs, ignore_errors=True)
        raise disk_error(exc, "store the evaluation", run_dir) from None
    for old in thumbs_root.iterdir():
        if old.is_dir() and old.name != stamp:
            shutil.rmtree(old, ignore_errors=True)
    return evaluation


def evaluate_run(run_dir: str | Path, *, model=None, source=None, features=None, progress: Progress | None = None,
                 max_wrong: int = DEFAULT_MAX_WRONG) -> Evaluation:
    """Evaluate a finished run on its validation split and store evaluation.json in its folder.

    Training hands over the model and source it holds (else they are reopened from the run, same seed, same
    split) and, for a frozen first layer, the validation split's (features, labels) in split order: then only
    the layers after it run, and only the gallery's images are decoded again.
    """
    start = time.perf_counter()
    run, data, source, model, softmax, notes = _open_for_evaluation(run_dir, model, source)
    total = source.info.split_size(VALIDATION)
    rows = None if features is None else _feature_rows(source, data.image_size, len(features[1]))
    if features is not None and rows is None:
        logger.info("Cached features of %s do not match its validation images; evaluating them anew.", run.run_id)
    worst = _WorstMistakes(max_wrong)
    if rows is not None:
        y_true, y_pred = _predict_features(model, softmax, source, data.image_size, features, rows, worst)
        if progress:
            progress(len(y_true), total)
    else:
        y_true, y_pred = _predict_images(model, softmax, source, data, worst, progress)
    done = len(y_true)
    if not done:
        raise LabError(f"None of the validation images of {data.source} could be read, so the run cannot be "
                       "evaluated.")
    matrix = confusion_matrix(y_true, y_pred, len(run.class_names))
    per_class, accuracy = per_class_metrics(matrix, run.class_names), overall_accuracy(matrix)
    percentages = [[None if math.isnan(v) else round(float(v), 4) for v in row] for row in row_percentages(matrix)]
    evaluation = Evaluation(run.path, run.class_names, matrix.tolist(), percentages, per_class, accuracy, done,
                            total - done, [], 0.0, 0.0, notes)
    evaluation = _store(evaluation, worst.rows, _split_names(source), start)
    logger.info("Evaluated %s: %d images, accuracy %.4f", run.run_id, done, accuracy)
    return evaluation
