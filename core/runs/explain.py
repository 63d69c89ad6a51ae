"""Explanation heatmaps: which parts of an image a model's prediction depends on.

Occlusion sensitivity works for every model, a hub layer's included: a grey patch slides over the image and
the map records how far the explained class's log-odds drop while each pixel is covered (one batched forward
pass per patch position). Grad-CAM needs a reachable last Conv2D layer (the baseline CNN); one forward and
one backward pass, but only as fine as that layer's output. Both give a map in [0, 1] at the image's size
(1 = what the prediction depends on most) and that map drawn over the image in HEATMAP_COLORSCALE.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.runs.predict import softmax
from core.settings.errors import LabError

OCCLUSION = "occlusion"
GRAD_CAM = "gradcam"
METHOD_LABELS = {OCCLUSION: "Occlusion sensitivity", GRAD_CAM: "Grad-CAM"}

# (position in [0, 1], RGB): the "jet" scale usual for saliency maps, identical to plotly's "Jet".
HEATMAP_COLORSCALE: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (0, 0, 131)),
    (0.125, (0, 60, 170)),
    (0.375, (5, 255, 255)),
    (0.625, (255, 255, 0)),
    (0.875, (250, 0, 0)),
    (1.0, (128, 0, 0)),
)
OVERLAY_ALPHA = 0.45  # weight of the colour map over the image: enough to read both
OCCLUSION_GREY = 0.5  # the patch value in the model's [0, 1] input: mid-grey carries no colour or edge
DEFAULT_PATCH_FRACTION = 1 / 8  # patch side as a share of the model's input side (28 px at 224)

# Called after every batch of occluded images with (patch positions done, positions in all).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Explanation:
    method: str  # OCCLUSION or GRAD_CAM
    heatmap: np.ndarray  # float32 (H, W) in [0, 1], the explained image's height and width
    overlay: np.ndarray  # uint8 (H, W, 3): the heatmap's colours blended over the image
    class_index: int  # the class explained
    class_name: str
    probability: float  # the model's probability for that class on the unaltered image
    # What 1.0 on the map stands for: the largest drop of the class's log-odds (occlusion) or the largest
    # Grad-CAM activation, before scaling. 0 means the map is flat and shows nothing.
    peak: float
    seconds: float

    @property
    def label(self) -> str:
        return METHOD_LABELS[self.method]


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 along HEATMAP_COLORSCALE."""
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    stops = np.array([p for p, _ in HEATMAP_COLORSCALE], dtype=np.float32)
    colours = np.array([c for _, c in HEATMAP_COLORSCALE], dtype=np.float32)
    channels = [np.interp(values, stops, colours[:, c]) for c in range(3)]
    return np.clip(np.stack(channels, axis=-1) + 0.5, 0, 255).astype(np.uint8)


def plotly_colorscale() -> list[list]:
    """HEATMAP_COLORSCALE in plotly's format, for a colour bar that matches the overlay."""
    return [[p, f"rgb{c}"] for p, c in HEATMAP_COLORSCALE]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The heatmap's colours blended over an RGB uint8 image of the same height and width."""
    if image.shape[:2] != heatmap.shape:
        raise ValueError(f"heatmap {heatmap.shape} does not match image {image.shape[:2]}")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(heatmap).astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def resize_map(small: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map resized (bilinear) to height x width, kept in [0, 1]."""
    from PIL import Image

    img = Image.fromarray(np.asarray(small, dtype=np.float32))
    return np.clip(np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.float32), 0.0, 1.0)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise LabError("The image to explain must be decoded RGB pixels (an HxWx3 uint8 array); "
                       "decode it with core.data.images.decode_image first.")


def _normalised(raw: np.ndarray) -> tuple[np.ndarray, float]:
    raw = np.maximum(np.asarray(raw, dtype=np.float32), 0.0)
    peak = float(raw.max()) if raw.size else 0.0
    return (raw / peak if peak > 0 else np.zeros_like(raw)), peak


def _model_input(loaded, image: np.ndarray) -> np.ndarray:
    from core.data.sources import preprocess

    return np.asarray(preprocess(image, loaded.image_size), dtype=np.float32)


def log_odds(loaded, outputs: np.ndarray, k: int) -> np.ndarray:
    """log(p / (1 - p)) of class k per row, computed from logits so that it stays finite where a
    confident model's probability rounds to exactly 1 in float32."""
    if loaded.softmax_output:
        p = np.clip(outputs[:, k], 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)
    others = np.delete(outputs, k, axis=1)
    if others.shape[1] == 0:
        return outputs[:, k]
    top = others.max(axis=1)
    return outputs[:, k] - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))


def _target(loaded, probs: np.ndarray, class_index: int | None) -> int:
    if class_index is None:
        return int(np.argmax(probs))
    if not 0 <= class_index < len(loaded.class_names):
        raise LabError(f"Class index {class_index} is out of range; the model has {len(loaded.class_names)} classes.")
    return int(class_index)


def _result(method: str, loaded, image, small_map, k, probability, start) -> Explanation:
    small, peak = _normalised(small_map)
    heatmap = resize_map(small, image.shape[0], image.shape[1])
    return Explanation(method, heatmap, overlay(image, heatmap), k, loaded.class_names[k], probability, peak,
                       round(time.perf_counter() - start, 3))


def patch_positions(side: int, patch: int, stride: int) -> list[int]:
    """Top-left offsets along one axis so that patches of `patch` pixels cover all `side` pixels."""
    if patch >= side:
        return [0]
    positions = list(range(0, side - patch + 1, stride))
    if positions[-1] != side - patch:
        positions.append(side - patch)
    return positions


def occlusion_sensitivity(loaded, image: np.ndarray, class_index: int | None = None,
                          patch_fraction: float = DEFAULT_PATCH_FRACTION, stride_fraction: float = 0.5,
                          batch_size: int = 32, progress: Progress | None = None) -> Explanation:
    """Slide a grey patch over the model's input; a pixel's value is the mean drop of the explained class's
    log-odds (the predicted class unless class_index is given) over the patches covering it. Log-odds order
    patches as the probability does, but still move where a confident model's probability (0.99999) barely
    does. Patches of patch_fraction of the side, every stride_fraction of a patch: 225 passes at 224x224.
    """
    _check_image(image)
    if not 0 < patch_fraction <= 1 or not 0 < stride_fraction <= 1:
        raise LabError("The patch and stride fractions must be between 0 and 1.")
    start = time.perf_counter()
    x = _model_input(loaded, image)
    side = loaded.image_size
    patch = max(1, round(side * patch_fraction))
    stride = max(1, round(patch * stride_fraction))
    base_out = loaded.outputs(x[None])
    base_probs = (base_out if loaded.softmax_output else softmax(base_out))[0]
    k = _target(loaded, base_probs, class_index)
    base = log_odds(loaded, base_out, k)[0]
    offsets = patch_positions(side, patch, stride)
    boxes = [(top, left) for top in offsets for left in offsets]
    drops = np.zeros((side, side), np.float64)
    covered = np.zeros((side, side), np.float64)
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first:first + batch_size]
        batch = np.repeat(x[None], len(chunk), axis=0)
        for i, (top, left) in enumerate(chunk):
            batch[i, top:top + patch, left:left + patch, :] = OCCLUSION_GREY
        scores = log_odds(loaded, loaded.outputs(batch), k)
        for (top, left), score in zip(chunk, scores):
            drops[top:top + patch, left:left + patch] += base - score
            covered[top:top + patch, left:left + patch] += 1
        if progress:
            progress(first + len(chunk), len(boxes))
    return _result(OCCLUSION, loaded, image, drops / np.maximum(covered, 1), k, float(base_probs[k]), start)


def last_conv_layer(model):
    """The last Conv2D layer reachable in the model's top level, or None (e.g. behind a hub layer)."""
    import tf_keras

    for layer in reversed(model.layers):
        if isinstance(layer, tf_keras.layers.Conv2D):
            return layer
    return None


def available_methods(loaded) -> list[str]:
    """Methods that can explain this model; occlusion always, Grad-CAM with a reachable Conv2D."""
    reachable = loaded.model is not None and last_conv_layer(loaded.model) is not None  # a shared hub backbone's are not
    return [OCCLUSION] + ([GRAD_CAM] if reachable else [])


def grad_cam(loaded, image: np.ndarray, class_index: int | None = None) -> Explanation:
    """Grad-CAM on the last reachable Conv2D layer, for the explained (by default the predicted) class."""
    import tensorflow as tf
    import tf_keras

    _check_image(image)
    model = loaded.model
    conv = last_conv_layer(model) if model is not None else None
    if conv is None:
        raise LabError("Grad-CAM needs a Conv2D layer the Lab can reach, and this model has none (a hub layer "
                       "hides its insides); use occlusion sensitivity instead.")
    start = time.perf_counter()
    x = tf.constant(_model_input(loaded, image)[None])
    with tf.GradientTape() as tape:
        if isinstance(model, tf_keras.Sequential):
            # Calling the layers one by one exposes the conv output without building a second model
            # around a model that other sessions may be using at the same time.
            out = x
            for layer in model.layers:
                out = layer(out, training=False)
                if layer is conv:
                    features = out
        else:
            features, out = tf_keras.Model(model.inputs, [conv.output, model.output])(x, training=False)
        probs = out if loaded.softmax_output else tf.nn.softmax(out)
        k = _target(loaded, probs[0].numpy(), class_index)
        # The pre-softmax score, as Grad-CAM defines it; a softmax-only model offers its probability.
        score = out[0, k]
    grads = tape.gradient(score, features)
    if grads is None:
        raise LabError("Grad-CAM could not follow the gradient to the last conv layer of this model; "
                       "use occlusion sensitivity instead.")
    weights = tf.reduce_mean(grads, axis=(1, 2))
    cam = tf.nn.relu(tf.reduce_sum(features * weights[:, None, None, :], axis=-1))[0].numpy()
    return _result(GRAD_CAM, loaded, image, cam, k, float(probs[0, k]), start)


def explain(loaded, image: np.ndarray, method: str = OCCLUSION, class_index: int | None = None,
            progress: Progress | None = None) -> Explanation:
    """An explanation heatmap by the named method (see available_methods)."""
    if method == OCCLUSION:
        return occlusion_sensitivity(loaded, image, class_index=class_index, progress=progress)
    if method == GRAD_CAM:
        result = grad_cam(loaded, image, class_index=class_index)
        if progress:
            progress(1, 1)
        return result
    raise LabError(f"Unknown explanation method '{method}'; choose {' or '.join(METHOD_LABELS)}.")
