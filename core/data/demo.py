"""Offline stand-ins for the article's downloads: image-folder datasets and SavedModel backbones.

- make_scenes_folder writes the offline demo's dataset (core.data.scenes.TARGET_SHAPES); its backbone is
  pretrained by core.models.demo_backbone. Workshop hosts without a network use both (`python -m core demo`,
  the Dataset page's generated demo).
- make_demo_folder (coloured circles, squares, triangles) and make_demo_backbone (fixed random filters,
  never trained) are cheap fixtures for tests that need a learnable folder and a loadable module, not a
  lesson; make_mobilenet_backbone has the real module's shape and speed for benchmarks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

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
    its layers' call functions would come too (67 for the demo backbone), and loading it would take several
    times as long (MobileNetV2: 4 s here instead of 0.45; the demo backbone: 0.6 s instead of 0.08), a
    cost the published modules do not have.
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
    """A MobileNetV2 feature extractor with random weights: the real module's shape and speed, offline."""
    import tf_keras

    net = tf_keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                            input_shape=(image_size, image_size, 3))
    save_feature_extractor(net, path, (image_size, image_size, 3))
    return Path(path)
