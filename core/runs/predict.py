"""Bytes in, class probabilities out: checked decoding, the training preprocessing, one batched call."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.images import decode_image
from core.data.sources import preprocess
from core.models.architectures import MAX_SHARED_BACKBONES, shared_backbone_layer
from core.safety.model_files import (
    MAX_CLASS_NAME,
    backbone_digest,
    check_hub_module,
    inspect_model_file,
    load_model,
    numbered_classes,
    read_hub_head,
)
from core.settings.errors import ImageError, LabError, ModelFileError, error_line
from core.settings.paths import configure_caches

MAX_INPUT_SIDE = 1024  # the largest image size training accepts (core.settings.config.validate)


@dataclass(frozen=True)
class Prediction:
    name: str
    label: str
    confidence: float
    probabilities: dict[str, float]  # class name -> probability, in class order


@dataclass(frozen=True)
class PredictionError:
    name: str
    message: str


@dataclass
class LoadedModel:
    """A reloaded model with what prediction needs; read-only after construction, safe to share.

    model is the whole reloaded Keras model, or None where a SharedBackbone computes the features and head
    (the Dense layer's kernel and bias, as numpy arrays) turns them into outputs.
    """
    model: object
    class_names: list[str]
    image_size: int
    softmax_output: bool
    path: Path
    load_seconds: float
    backbone: SharedBackbone | None = None
    head: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self):
        if self.backbone is not None:
            return
        import tensorflow as tf

        model, already_probs = self.model, self.softmax_output

        def probabilities(x):
            out = model(x, training=False)
            return out if already_probs else tf.nn.softmax(out)

        self._call, self._one = _compiled(probabilities, self.image_size)

    def _logits(self, features) -> np.ndarray:
        kernel, bias = self.head
        return np.asarray(features, dtype=np.float32) @ kernel + bias

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities for decoded uint8 RGB images, in one batched call."""
        import tensorflow as tf

        shared = self.backbone is not None
        if len(images) == 1:  # a softmax Dense's probabilities and softmax(logits) are the same
            return softmax(self._logits(self.backbone.one(images[0]))) if shared else self._one(images[0]).numpy()
        batch = tf.stack([preprocess(img, self.image_size) for img in images])
        return softmax(self._logits(self.backbone.features(batch))) if shared else self._call(batch).numpy()

    def outputs(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw outputs (logits, or probabilities for a softmax model) for a preprocessed batch."""
        if self.backbone is None:
            return np.asarray(self.model(batch, training=False), dtype=np.float64)
        logits = self._logits(self.backbone.features(batch))
        return (softmax(logits) if self.softmax_output else logits).astype(np.float64)


def _compiled(call, size: int):
    """call compiled for a preprocessed float32 batch, and for one decoded image (a batch of one). Compiled, it
    skips model.predict's per-call set-up, and one upload's resize runs inside the graph too: done eagerly it
    costs a noticeable share of MobileNetV2's time for one image. A fixed signature traces once."""
    import tensorflow as tf

    batch = tf.function(call, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def one(image):
        return batch(preprocess(image, size)[tf.newaxis])

    return batch, one


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by each row's largest logit so that none overflows."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class SharedBackbone:
    """One loaded hub module and its compiled feature functions, for every reloaded model that keeps it frozen
    under a Dense layer of its own: a room's participants' models differ only in that Dense, so each costs
    its kernel rather than another copy of the backbone's variables and graphs."""

    def __init__(self, handle: str, size: int):
        import tensorflow as tf

        self.handle, self.size = handle, size
        self.layer = shared_backbone_layer(handle, size)  # the one a training in this process would use too
        self.digest = backbone_digest(w.numpy() for w in self.layer.weights)
        self.features, self.one = _compiled(lambda x: self.layer(x, training=False), size)
        self.width = int(self.features(tf.zeros([1, size, size, 3])).shape[-1])


_backbones: OrderedDict[tuple[str, int], SharedBackbone] = OrderedDict()
_backbones_lock = threading.Lock()


def shared_backbone(handle: str, size: int, label: str) -> SharedBackbone:
    """The process's copy of this hub module at this input size, loaded (after load_model's checks) if new."""
    key = (handle, size)
    with _backbones_lock:  # one load per module however many sessions ask at once
        if key in _backbones:
            _backbones.move_to_end(key)
            return _backbones[key]
        configure_caches()
        check_hub_module(handle, label)
        try:
            backbone = SharedBackbone(handle, size)
        except Exception as exc:
            raise ModelFileError(f"'{label}' could not be loaded ({error_line(exc)}).") from None
        _backbones[key] = backbone
        while len(_backbones) > MAX_SHARED_BACKBONES:  # as many as the layers' own cache keeps
            _backbones.popitem(last=False)
        return backbone


def _check_shape(label: str, shape, out) -> None:
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise LabError(f"'{label}' expects input of shape {shape}; the Lab needs square RGB images.")
    if shape[1] > MAX_INPUT_SIDE:
        # Every upload would be resized to this many float32 pixels: a 30000x30000 input is 10 GB an image.
        raise LabError(f"'{label}' expects {shape[1]}x{shape[2]} images; the Lab classifies at most "
                       f"{MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}.")
    if not isinstance(out, tuple) or len(out) != 2 or not out[1]:
        raise LabError(f"'{label}' outputs shape {out}; the Lab needs one score per class, shape (batch, classes).")


def _class_names(info, classes: int) -> list[str]:
    return info.class_names if len(info.class_names) == classes else numbered_classes(classes)


def typed_class_names(text: str, count: int) -> list[str]:
    """Names a person gives the classes of a model that stores none: comma-separated, in the model's output
    order (for the article's cats_vs_dogs model: cat, dog). ValueError says what is wrong with them."""
    names = [" ".join(n.split()) for n in str(text).split(",")]
    if len(names) != count or not all(names):
        raise ValueError(f"This model has {count} classes: give {count} names separated by commas.")
    if any(len(n) > MAX_CLASS_NAME for n in names):
        raise ValueError(f"A class name has at most {MAX_CLASS_NAME} characters.")
    if len(set(names)) != count:
        raise ValueError("Give each class a different name.")
    return names


def load_with_shared_backbone(path: str | Path, allowed_handle=None, name: str | None = None) -> LoadedModel | None:
    """The model as the process's shared backbone plus its own Dense layer, when it is the Lab's frozen
    transfer model whose backbone weights are the hub module's own; None for any other model (a fine-tuned
    one included). Arguments as for load_for_prediction."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "model.h5"
    label = name or path.name
    start = time.perf_counter()
    info = inspect_model_file(path, allowed_handle=allowed_handle, name=label)
    head = read_hub_head(path, info)
    if head is None or not info.input_size:
        return None
    size = info.input_size
    _check_shape(label, (None, size, size, 3), (None, head.kernel.shape[1]))
    backbone = shared_backbone(head.handle, size, label)
    if backbone.digest != head.backbone_digest or backbone.width != head.kernel.shape[0]:
        return None
    return LoadedModel(None, _class_names(info, head.kernel.shape[1]), size, info.softmax_output, path,
                       time.perf_counter() - start, backbone, (head.kernel, head.bias))


def load_for_prediction(path: str | Path, allowed_handle=None, name: str | None = None,
                        share_backbone: bool = False) -> LoadedModel:
    """Reload an .h5 (or a run folder's model.h5) the article's way, after the safety inspection.

    allowed_handle and name are passed to core.safety.model_files.load_model (an upload's policy and own name).
    share_backbone: a frozen transfer model runs on the process's shared copy of its hub module, with only
    its Dense layer read from the file (same outputs; a server classifying with many such models holds one
    backbone). Any other model, and every model without it, is reloaded whole.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "model.h5"
    label = name or path.name
    if share_backbone:
        shared = load_with_shared_backbone(path, allowed_handle, label)
        if shared is not None:
            return shared
    start = time.perf_counter()
    model, info = load_model(path, allowed_handle=allowed_handle, name=label)
    _check_shape(label, model.input_shape, model.output_shape)
    return LoadedModel(model, _class_names(info, model.output_shape[1]), int(model.input_shape[1]),
                       info.softmax_output, path, time.perf_counter() - start)


def predict_bytes(loaded: LoadedModel, files: list[tuple[str, bytes]],
                  class_names: list[str] | None = None) -> list[Prediction | PredictionError]:
    """Classify named image files; a bad file becomes a PredictionError and the others still run.

    class_names, one per output, replaces the model's own (typed_class_names; the loaded model is shared).
    """
    names = class_names or loaded.class_names
    decoded: list[tuple[int, np.ndarray]] = []
    results: list[Prediction | PredictionError | None] = [None] * len(files)
    for i, (name, data) in enumerate(files):
        try:
            decoded.append((i, decode_image(data, name, min_side=loaded.image_size)))
        except ImageError as exc:
            results[i] = PredictionError(name, str(exc))
    if decoded:
        probs = loaded.probabilities([img for _, img in decoded])
        for (i, _), p in zip(decoded, probs):
            k = int(np.argmax(p))
            results[i] = Prediction(files[i][0], names[k], float(p[k]), {n: float(v) for n, v in zip(names, p)})
    return results  # type: ignore[return-value]
