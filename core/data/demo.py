"""Offline stand-ins for the article's downloads: image-folder datasets and SavedModel backbones.

- make_scenes_folder writes the offline demo's dataset (core.data.scenes.TARGET_SHAPES); its backbone is
  pretrained by core.models.demo_backbone. Workshop hosts without a network use both (`python -m core demo`,
  the Dataset page's generated demo).
- make_demo_folder (coloured circles, squares, triangles) and make_demo_backbone (fixed random filters,
  never trained) are cheap fixtures for tests that need a learnable folder and a loadable module, not a
  lesson; make_mobilenet_backbone has the real module's shape and speed for benchmarks.
- prepare_once builds a folder of the shared cache (the demo's dataset and backbone) once, however many
  sessions and processes ask for it at the same moment.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

from core.settings.files import TEMP_MARK, read_json, remove_path, replace_path, try_lock, write_json

# Each class: a shape of a characteristic colour on a noisy background, at a random place and size.
DEMO_CLASSES = {
    "circles": ((220, 60, 40), "ellipse"),
    "squares": ((40, 90, 220), "rectangle"),
    "triangles": ((40, 180, 60), "polygon"),
}


def demo_image(class_name: str, rng: np.random.Generator, size: tuple[int, int] = (96, 96)) -> Image.Image:
    colour, shape = DEMO_CLASSES[class_name]
    w, h = size
    background = rng.integers(90, 166, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    side = int(min(w, h) * rng.uniform(0.45, 0.7))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    jitter = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
    if shape == "ellipse":
        draw.ellipse([x0, y0, x0 + side, y0 + side], fill=jitter)
    elif shape == "rectangle":
        draw.rectangle([x0, y0, x0 + side, y0 + side], fill=jitter)
    else:
        draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side // 2, y0)], fill=jitter)
    return img


def make_demo_folder(root: str | Path, per_class: int = 40, classes: tuple[str, ...] = ("circles", "squares"),
                     size: tuple[int, int] = (96, 96), seed: int = 0, fmt: str = "JPEG") -> Path:
    """Write root/<class>/<n>.jpg images; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            demo_image(name, rng, size).save(folder / f"{name}_{i:04d}.{ext}", fmt, quality=90)
    return root


DEMO_PER_CLASS = 200  # a few hundred images: what a workshop fine-tunes on, not what a CNN learns from
DEMO_IMAGE_SIZE = 96


def make_scenes_folder(root: str | Path, per_class: int = DEMO_PER_CLASS, size: int = DEMO_IMAGE_SIZE,
                       seed: int = 0) -> Path:
    """Write root/<class>/<n>.jpg for the demo's target classes (hearts, crescents, arrows); returns root."""
    from core.data.scenes import TARGET_SHAPES, target_image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in TARGET_SHAPES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):  # classes interleaved, so one seed's images do not depend on the class order
        for name in TARGET_SHAPES:
            target_image(name, rng, size).save(root / name / f"{name}_{i:04d}.jpg", "JPEG", quality=90)
    return root


def make_demo_backbone(path: str | Path, features: int = 32, seed: int = 0) -> Path:
    """Save a tiny SavedModel feature extractor that hub.KerasLayer can load like the real module.

    Fixed random 5x5 conv filters, ReLU, global average and max pooling, never trained: outputs that
    separate make_demo_folder's colours, so a Dense head on them learns in tests, unlike an untrained
    MobileNetV2's (~1e-12) features. Not a pretrained backbone: the demo uses core.models.demo_backbone.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    kernel = tf.constant(rng.normal(0, 0.5, size=(5, 5, 3, features)).astype(np.float32))
    bias = tf.constant(rng.normal(0, 0.2, size=(features,)).astype(np.float32))

    class Extractor(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(kernel, trainable=True, name="kernel")
            self.bias = tf.Variable(bias, trainable=True, name="bias")

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            x = tf.nn.conv2d(images - 0.5, self.kernel, strides=2, padding="SAME") + self.bias
            x = tf.nn.relu(x)
            return tf.concat([tf.reduce_mean(x, axis=[1, 2]), tf.reduce_max(x, axis=[1, 2])], axis=-1)

    module = Extractor()
    tf.saved_model.save(reusable(module, [module.kernel, module.bias], [module.kernel, module.bias]), str(path))
    return Path(path)


def reusable(module, variables, trainable_variables):
    """Wrap a module as TF Hub publishes one (the Reusable SavedModel API).

    hub.KerasLayer takes its weights from these attributes: without them a model built on the module
    would count none of the backbone's parameters and have nothing for trainable=False to freeze.
    """
    import tensorflow as tf

    root = tf.train.Checkpoint(module=module)
    root.__call__ = module.__call__
    root.variables = list(variables)
    root.trainable_variables = list(trainable_variables)
    root.regularization_losses = []
    return root


def save_feature_extractor(model, path: str | Path, input_shape: tuple) -> None:
    """Save a Keras feature extractor as TF Hub publishes an image feature vector: a root with `__call__`
    (inputs of input_shape, batched) and its variable lists, nothing else.

    The Keras model is reached through `forward`, not held as an attribute: saved along with it, every one of
    its layers' call functions would come too, and loading it would take several times as long.
    """
    import tensorflow as tf

    def forward(images):
        return model(images, training=False)

    class Module(tf.Module):
        # No autograph: it cannot convert a class defined in a function, and there is no control flow to convert.
        @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.float32)], autograph=False)
        def __call__(self, images):
            return forward(images)

    tf.saved_model.save(reusable(Module(), model.variables, model.trainable_variables), str(path))


def make_mobilenet_backbone(path: str | Path, image_size: int = 224) -> Path:
    """A MobileNetV2 feature extractor with random weights: the real module's shape and speed, offline.

    Its batch normalisation statistics are those of one batch of noise: with Keras's initial ones (mean 0,
    variance 1) the random layers shrink every feature to about 1e-12 and a head on them learns nothing,
    so a benchmark's accuracy would be chance whatever it trained on.
    """
    import tf_keras

    net = tf_keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                            input_shape=(image_size, image_size, 3))
    norms = [layer for layer in net.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # the moving statistics become this batch's
    net(np.random.default_rng(0).uniform(0, 1, (16, image_size, image_size, 3)).astype(np.float32), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    save_feature_extractor(net, path, (image_size, image_size, 3))
    return Path(path)


# (fraction done in [0, 1], message): how a page or the CLI follows a preparation.
Progress = Callable[[float, str], None]
T = TypeVar("T")
WAIT_POLL_SECONDS = 0.25  # how often a caller following a preparation (another's, or a child's) looks at it


def prepare_once(final: Path, ready: Callable[[Path], bool], build: Callable[[Path, Progress | None], T],
                 progress: Progress | None = None) -> T | None:
    """Make folder `final` of the shared cache with build(folder, progress), once, however many threads and
    processes ask at the same moment (sessions of one server share a process, a workshop's first minute
    brings several, the command line may run beside them).

    One caller at a time holds an exclusive lock on a file beside final and builds into a temporary folder
    of its own, renamed into place only when complete, so nobody ever sees a half-written final. The others
    wait for the lock, passing the builder's progress on to their own callback meanwhile, then find final
    ready and use it. Returns build's result, or None when final was ready (at once or after waiting).
    """
    if ready(final):
        return None
    final.parent.mkdir(parents=True, exist_ok=True)
    status = final.parent / f".{final.name}.progress"
    with open(final.parent / f".{final.name}.lock", "a+") as lock:
        _wait_for(lock, status, progress)
        try:
            if ready(final):  # built by the caller that held the lock before
                return None
            # Only the lock's holder makes these: any left are a killed builder's (its folder, its status).
            for prefix in (f".{final.name}.tmp-", f".{status.name}{TEMP_MARK}"):
                for left in final.parent.glob(glob.escape(prefix) + "*"):
                    remove_path(left)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
            try:
                same_permissions(tmp, final.parent)
                result = build(tmp, reporting(status, progress))
                replace_path(tmp, final)  # an outdated final is another version's, or size's
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return result
        finally:
            status.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _wait_for(lock, status: Path, progress: Progress | None) -> None:
    """Take the lock; until then, pass the holder's progress (from its status file) on to progress."""
    if progress is None:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return
    follow_progress(status, progress, lambda: try_lock(lock))


def follow_progress(status: Path, progress: Progress | None, done: Callable[[], bool]) -> None:
    """Until done() is true, pass the status file's (fraction, message) on to progress each time it changes."""
    shown = None
    while not done():
        news = read_progress(status)
        if progress and news is not None and news != shown:
            shown = news
            progress(*news)
        time.sleep(WAIT_POLL_SECONDS)


def read_progress(status: Path) -> tuple[float, str] | None:
    """(fraction, message) from a status file that reporting() writes; None until it is written."""
    try:
        fraction, message = read_json(status, list, max_bytes=64 * 1024)
        return float(fraction), str(message)
    except (ValueError, TypeError):
        return None


def reporting(status: Path, progress: Progress | None = None) -> Progress:
    """progress, also written to the status file (atomically) for the callers waiting for the lock."""
    def report(fraction: float, message: str) -> None:
        # Best effort: a status that cannot be written only leaves the waiting callers without news.
        with contextlib.suppress(OSError, TypeError, ValueError):
            write_json(status, [float(fraction), str(message)], indent=None)
        if progress:
            progress(fraction, message)

    return report


def same_permissions(folder: Path, like: Path) -> None:
    """Give a mkdtemp folder, its owner's alone, the read/write/search bits of `like` (the folder it is
    published in), as a folder made with mkdir would have; bits such as an inherited set-group-id stay."""
    own = stat.S_IMODE(folder.stat().st_mode)
    os.chmod(folder, (own & ~0o777) | (stat.S_IMODE(like.stat().st_mode) & 0o777))
