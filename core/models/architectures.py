"""The article's two models, built with tf_keras (Keras 2).

TF >= 2.16 ships Keras 3, and hub.KerasLayer is a Keras 2 layer: adding it to a Keras 3 model raises
"Only instances of keras.Layer can be added to a Sequential model". So every model here, the baseline
too, is built with tf_keras, and every .h5 is saved and loaded by the same Keras.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from core.settings.config import ModelKind, is_mobilenet_v2_handle
from core.settings.errors import LabError, ModelFileError, error_line
from core.settings.specs import spec


def tf_keras():
    import tf_keras as keras  # imported lazily: pages that only read runs never pay for TensorFlow

    return keras


def build_baseline(num_classes: int, image_size: int):
    """The article's Conv/MaxPool network, layer for layer (9,679,554 parameters at 224x224x3, 2 classes):

    Conv2D(32,3x3,relu) MaxPool(2) Conv2D(64,3x3,relu) MaxPool(2) Conv2D(128,3x3,relu) MaxPool(2)
    Conv2D(128,3x3,relu) MaxPool(2) Dropout(0.5) Flatten Dense(512,relu) Dense(num_classes) -> logits.
    """
    layers = tf_keras().layers
    return tf_keras().Sequential([
        layers.Conv2D(32, (3, 3), activation="relu", input_shape=(image_size, image_size, 3)),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(128, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(128, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Dropout(0.5),
        layers.Flatten(),
        layers.Dense(512, activation="relu"),
        # float32 even under mixed precision: float16 logits overflow and make the loss unstable.
        layers.Dense(num_classes, dtype="float32"),
    ], name="baseline_cnn")


# A warm worker trains one job after another, in a workshop room mostly on the same hub module, and Predict
# classifies with many participants' models on it: a frozen module is loaded once per process and each model
# puts its own Dense on it. Only frozen and outside a distribution strategy: fine-tuning changes the module's
# weights, and a strategy needs copies of its own.
MAX_SHARED_BACKBONES = 2
_shared_backbones: OrderedDict = OrderedDict()
_shared_lock = threading.Lock()


def _new_backbone(handle: str, image_size: int, trainable: bool):
    import tensorflow_hub as hub

    return hub.KerasLayer(handle, input_shape=(image_size, image_size, 3), trainable=trainable,
                          name="feature_extractor")


def shared_backbone_layer(handle: str, image_size: int):
    """This process's one frozen copy of the module at handle for this input size (the last
    MAX_SHARED_BACKBONES kept); load it first if new."""
    key = (handle, image_size)
    with _shared_lock:  # one load however many threads ask at once
        if key not in _shared_backbones:
            _shared_backbones[key] = _new_backbone(handle, image_size, trainable=False)
            while len(_shared_backbones) > MAX_SHARED_BACKBONES:
                _shared_backbones.popitem(last=False)
        _shared_backbones.move_to_end(key)
        return _shared_backbones[key]


def build_transfer(num_classes: int, image_size: int, handle: str, trainable: bool = False, shared: bool = False):
    """A frozen hub feature extractor plus one Dense layer producing logits, as in the article.

    shared: the frozen feature extractor is this process's one copy of the module (never fine-tune such a
    model: unfreezing it would change every other model's backbone)."""
    import tensorflow as tf

    from core.models.hub import fetch

    handle = fetch(handle)
    try:
        backbone = (shared_backbone_layer(handle, image_size) if shared and not trainable
                    and not tf.distribute.has_strategy() else _new_backbone(handle, image_size, trainable))
        model = tf_keras().Sequential([backbone, tf_keras().layers.Dense(num_classes, dtype="float32")],
                                     name="mobilenet_v2_transfer" if is_mobilenet_v2_handle(handle) else "transfer")
    except LabError:
        raise
    except Exception as exc:
        raise ModelFileError(
            f"The hub module '{handle}' could not be used with {image_size}x{image_size} RGB input "
            f"({error_line(exc)}). The article's MobileNetV2 module "
            "takes 224x224 images and returns a feature vector."
        ) from None
    if len(model.output_shape) != 2:
        raise ModelFileError(f"The hub module '{handle}' does not return a feature vector "
                             f"(its output shape is {backbone.output_shape}).")
    return model


def build_model(kind: ModelKind, num_classes: int, image_size: int, handle: str, shared: bool = False):
    """The model of this kind; shared as for build_transfer."""
    if spec(kind).has_backbone:
        return build_transfer(num_classes, image_size, handle, shared=shared)
    return build_baseline(num_classes, image_size)


def compile_model(model, learning_rate: float) -> None:
    """adam, cross-entropy on logits, accuracy: the article's compile settings."""
    keras = tf_keras()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    output_shape: str
    params: int
    trainable: bool


def param_counts(model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    import numpy as np

    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = trainable + int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return total, trainable


def summary_rows(model) -> list[LayerRow]:
    rows = []
    for layer in model.layers:
        try:
            shape = str(layer.output_shape)
        except (AttributeError, RuntimeError):
            shape = "?"
        rows.append(LayerRow(layer.name, type(layer).__name__, shape.replace("None", "batch"),
                             int(layer.count_params()), bool(layer.trainable)))
    return rows


def summary_text(model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=96)
    return "\n".join(lines)
