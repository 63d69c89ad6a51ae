"""Saving and loading .h5 models the article's way, after checking the file is safe to deserialise.

tf_keras.models.load_model runs a Lambda layer's stored Python bytecode while loading (measured: a file
was written on load), so the model config is read with h5py and checked first: only tf_keras's own layers
and hub.KerasLayer are allowed, and a KerasLayer's handle must be resolvable without hanging.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from core.errors import LabError, ModelFileError

logger = logging.getLogger(__name__)

CLASS_NAMES_ATTR = "lab_class_names"
# Layers whose config carries code or references arbitrary functions: never deserialised.
REFUSED_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda"}
MAX_MODEL_BYTES = 500 * 1024**2


@dataclass(frozen=True)
class ModelFileInfo:
    path: Path
    input_size: int | None
    num_outputs: int | None
    class_names: list[str]
    hub_handles: list[str]
    softmax_output: bool


def _walk_layers(config: dict):
    """Every layer config in a (possibly nested) model config."""
    for layer in config.get("config", {}).get("layers", []) if isinstance(config.get("config"), dict) else []:
        yield layer
        if layer.get("class_name") in ("Sequential", "Functional", "Model"):
            yield from _walk_layers(layer)


def _nested_dicts(node):
    """Every dict anywhere inside a JSON value, the value itself included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nested_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nested_dicts(value)


def _holds_bytecode(node: dict) -> bool:
    """Keras marks marshalled Python functions as type "lambda" (Lambda's function_type, RNN cell
    wrappers' residual_fn_type, ...) or as class "__lambda__"; loading those runs them."""
    if node.get("class_name") == "__lambda__":
        return True
    return any(isinstance(k, str) and k.endswith("_type") and v == "lambda" for k, v in node.items())


def _allowed_layer_names() -> set[str]:
    import tf_keras

    names = {n for n in dir(tf_keras.layers) if not n.startswith("_")}
    return (names - REFUSED_LAYERS) | {"KerasLayer", "Sequential", "Functional", "Model"}


def inspect_model_file(path: str | Path, allowed_handle=None) -> ModelFileInfo:
    """Read an .h5 model's config without deserialising it; refuse anything that could run code.

    allowed_handle, if given, is called with each hub handle and returns False to refuse it (the web
    upload path only accepts hub URLs and folders the Lab owns).
    """
    import h5py

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"Model file '{path}' does not exist.")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise ModelFileError(f"'{path.name}' is larger than {MAX_MODEL_BYTES // 1024**2} MB; refusing to load it.")
    if not h5py.is_hdf5(str(path)):
        raise ModelFileError(f"'{path.name}' is not an HDF5 (.h5) model file.")
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            names_raw = f.attrs.get(CLASS_NAMES_ATTR)
            if raw is None and "layer_names" in f.attrs:
                raise ModelFileError(f"'{path.name}' holds weights only (model.save_weights), not a whole model; "
                                     "save the model with model.save('x.h5').")
            if raw is None or "model_weights" not in f:
                raise ModelFileError(f"'{path.name}' is an HDF5 file but not a saved Keras model; "
                                     "save one with model.save('x.h5').")
    except LabError:
        raise
    except Exception as exc:
        raise ModelFileError(f"'{path.name}' is damaged or truncated ({exc.__class__.__name__}).") from None
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError:
        raise ModelFileError(f"'{path.name}' has an unreadable model config.") from None
    if config.get("class_name") not in ("Sequential", "Functional", "Model"):
        raise ModelFileError(f"'{path.name}' holds a '{config.get('class_name')}', not a Keras model the Lab can load.")
    allowed = _allowed_layer_names()
    layers = list(_walk_layers(config))
    # Wrappers (TimeDistributed, Bidirectional, RNN cells) nest layer configs under keys that
    # _walk_layers does not follow, so the checks guarding against stored code look at every level.
    nested = [node for node in _nested_dicts(config) if isinstance(node.get("class_name"), str)]
    for node in nested:
        if node["class_name"] in REFUSED_LAYERS:
            raise ModelFileError(
                f"'{path.name}' contains a {node['class_name']} layer, which runs stored Python code when "
                "loaded; refusing to load it."
            )
    if any(_holds_bytecode(node) for node in _nested_dicts(config)):
        raise ModelFileError(f"'{path.name}' stores a Python function that would run when loaded; refusing to load it.")
    for layer in layers:
        cls = layer.get("class_name", "?")
        if cls not in allowed:
            raise ModelFileError(
                f"'{path.name}' uses a custom layer '{cls}'; only built-in Keras layers and hub.KerasLayer "
                "can be loaded."
            )
    handles = []
    for node in nested:
        if node["class_name"] != "KerasLayer":
            continue
        handle = node.get("config", {}).get("handle") if isinstance(node.get("config"), dict) else None
        if not isinstance(handle, str):
            raise ModelFileError(f"'{path.name}' has a KerasLayer without a handle string.")
        if allowed_handle is not None and not allowed_handle(handle):
            raise ModelFileError(
                f"'{path.name}' points its KerasLayer at '{handle}', which uploaded models may not use: "
                "only TF Hub / Kaggle URLs and folders inside the Lab's cache or runs folder."
            )
        handles.append(handle)
    input_size = num_outputs = None
    try:
        first = layers[0]["config"]
        shape = first.get("batch_input_shape") or first.get("input_shape")
        if shape and len(shape) == 4:
            input_size = int(shape[1]) if shape[1] else None
        elif shape and len(shape) == 3:
            input_size = int(shape[0]) if shape[0] else None
        last = layers[-1]
        num_outputs = int(last["config"].get("units")) if last.get("class_name") == "Dense" else None
        softmax = last["config"].get("activation") == "softmax"
    except (IndexError, KeyError, TypeError, ValueError):
        softmax = False
    class_names = []
    if names_raw is not None:
        try:
            class_names = [str(n) for n in json.loads(names_raw)]
        except (ValueError, TypeError):
            class_names = []
    return ModelFileInfo(path, input_size, num_outputs, class_names, handles, softmax)


def load_model(path: str | Path, allowed_handle=None):
    """Inspect, then load the .h5 with custom_objects={"KerasLayer": hub.KerasLayer} (the article's way).

    Returns (model, ModelFileInfo).
    """
    import tensorflow_hub as hub
    import tf_keras

    from core.hub import check_available
    from core.paths import configure_caches

    configure_caches()
    info = inspect_model_file(path, allowed_handle=allowed_handle)
    for handle in info.hub_handles:
        try:
            check_available(handle)
        except LabError as exc:
            raise ModelFileError(f"'{Path(path).name}' needs its hub module to load. {exc}") from None
    try:
        model = tf_keras.models.load_model(str(path), custom_objects={"KerasLayer": hub.KerasLayer})
    except LabError:
        raise
    except Exception as exc:
        raise ModelFileError(
            f"'{Path(path).name}' could not be loaded ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})."
        ) from None
    if not info.class_names and info.num_outputs:
        info = ModelFileInfo(info.path, info.input_size, info.num_outputs,
                             [f"class {i}" for i in range(info.num_outputs)], info.hub_handles, info.softmax_output)
    return model, info


def save_model(model, path: str | Path, class_names: list[str]) -> None:
    """Save as HDF5 (architecture, weights, compile settings, optimizer state) plus the class names."""
    import h5py

    model.save(str(path), save_format="h5", include_optimizer=True)
    with h5py.File(path, "a") as f:
        f.attrs[CLASS_NAMES_ATTR] = json.dumps(list(class_names))
