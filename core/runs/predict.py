"""Bytes in, class probabilities out: checked decoding, the training preprocessing, one batched call."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.settings.errors import ImageError, LabError

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
    """A reloaded model with what prediction needs; read-only after construction, safe to share."""
    model: object
    class_names: list[str]
    image_size: int
    softmax_output: bool
    path: Path
    load_seconds: float

    def __post_init__(self):
        import tensorflow as tf

        from core.data.sources import preprocess

        size, model, already_probs = self.image_size, self.model, self.softmax_output

        # A compiled function skips model.predict's per-call set-up (it builds a tf.data pipeline each
        # call); a fixed signature means one trace for any batch size.
        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def probabilities(x):
            out = model(x, training=False)
            return out if already_probs else tf.nn.softmax(out)

        # One upload (the usual case) is resized inside the graph too: done eagerly, the resize, scale and
        # stack cost about 1 ms more, 5-10% of MobileNetV2's time for one image on 2 cores (measured).
        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        def one_image(image):
            return probabilities(preprocess(image, size)[tf.newaxis])[0]

        self._call = probabilities
        self._one = one_image

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities for decoded uint8 RGB images, in one batched call."""
        import tensorflow as tf

        from core.data.sources import preprocess

        if len(images) == 1:
            return self._one(images[0]).numpy()[np.newaxis]
        batch = tf.stack([preprocess(img, self.image_size) for img in images])
        return self._call(batch).numpy()


def load_for_prediction(path: str | Path, allowed_handle=None, name: str | None = None) -> LoadedModel:
    """Reload an .h5 (or a run folder's model.h5) the article's way, after the safety inspection.

    allowed_handle and name are passed to core.safety.model_files.load_model (an upload's policy and own name).
    """
    from core.safety.model_files import load_model

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "model.h5"
    label = name or path.name
    start = time.perf_counter()
    model, info = load_model(path, allowed_handle=allowed_handle, name=label)
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise LabError(f"'{label}' expects input of shape {shape}; the Lab needs square RGB images.")
    if shape[1] > MAX_INPUT_SIDE:
        # Every upload would be resized to this many float32 pixels: a 30000x30000 input is 10 GB an image.
        raise LabError(f"'{label}' expects {shape[1]}x{shape[2]} images; the Lab classifies at most "
                       f"{MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}.")
    out = model.output_shape
    if not isinstance(out, tuple) or len(out) != 2 or not out[1]:
        raise LabError(f"'{label}' outputs shape {out}; the Lab needs one score per class, shape (batch, classes).")
    classes = out[1]
    names = info.class_names if len(info.class_names) == classes else [f"class {i}" for i in range(classes)]
    return LoadedModel(model, names, int(shape[1]), info.softmax_output, path, time.perf_counter() - start)


def predict_bytes(loaded: LoadedModel, files: list[tuple[str, bytes]]) -> list[Prediction | PredictionError]:
    """Classify named image files; a bad file becomes a PredictionError and the others still run."""
    from core.data.images import decode_image

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
            results[i] = Prediction(files[i][0], loaded.class_names[k], float(p[k]),
                                    {n: float(v) for n, v in zip(loaded.class_names, p)})
    return results  # type: ignore[return-value]
