"""Saving and loading .h5 models the article's way, after checking the file is safe to deserialise.

tf_keras.models.load_model runs a Lambda layer's stored bytecode while loading, so the config is read with
h5py first: only tf_keras's own layers and hub.KerasLayer, hub handles that resolve without hanging, a size
the config bounds, and (core.safety.hdf5_layout) every weight stored inside the file itself.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.models.hub import check_available, is_local, resolve_relative, web_upload_handle_allowed
from core.safety.hdf5_layout import AttributeReader, WeightRead, check_unstored, keras_reads, walk
from core.safety.savedmodel_ops import check_savedmodel
from core.settings.config import MAX_CLASSES  # what a dataset may have, so what a model may name
from core.settings.errors import LabError, ModelFileError, error_line
from core.settings.files import free_space
from core.settings.paths import configure_caches, uploads_dir
from core.settings.text import megabytes

logger = logging.getLogger(__name__)

CLASS_NAMES_ATTR = "lab_class_names"
# Layers whose config carries code or references arbitrary functions: never deserialised.
REFUSED_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda"}
MAX_MODEL_BYTES = 500 * 10**6
# Models uploaded through the web page: the dashboard's upload limit (.streamlit/config.toml), and how
# many distinct uploads stay on disk, so strangers cannot fill a hosted server's disk with them.
MAX_UPLOAD_BYTES = 200 * 10**6
KEPT_UPLOADS = 20
UPLOAD_PREFIX = "model-"


# The config is bounded before it is walked or built: a 6.5 KB file can declare a 2 GB Dense, and a long
# layer name is copied into every message and Keras structure that names the layer.
MAX_CONFIG_BYTES = 4 * 10**6  # the whole config; MobileNetV2 spelled out layer by layer is about 0.2 MB
MAX_CONFIG_DEPTH = 64  # nested models and initialiser configs reach about 12
MAX_CONFIG_STRING = 4096  # a layer name or a hub handle (a URL or a folder path)
MAX_DECLARED_PARAMS = 60_000_000  # the baseline CNN has 9.7 M, MobileNetV2 with its head 2.3 M; VGG16 138 M
MAX_CLASS_NAME = 200
UNKNOWN_FEATURES = 2048  # the width assumed where a config does not say (a hub module's output): a large backbone's


@dataclass(frozen=True)
class ModelFileInfo:
    path: Path
    input_size: int | None
    num_outputs: int | None
    class_names: list[str]
    hub_handles: list[str]
    softmax_output: bool
    weight_bytes: int = 0  # what tf_keras allocates reading the model's and optimizer's weights


MODEL_CLASSES = ("Sequential", "Functional", "Model")


def _walk_layers(config: dict):
    """Every layer config in a (possibly nested) model config."""
    for layer in _layers(config):
        yield layer
        if layer.get("class_name") in MODEL_CLASSES:
            yield from _walk_layers(layer)


def _layers(config: dict) -> list[dict]:
    """A model config's own layer list (checked to be a list of layer objects by _check_structure)."""
    inner = config.get("config")
    return inner.get("layers", []) if isinstance(inner, dict) else []


def _check_structure(node, label: str) -> None:
    """Depth and string lengths of the whole config, and that every layer list holds layer objects.

    Iterative, so a config nested thousands deep is refused rather than exhausting Python's stack.
    """
    stack = [(node, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise ModelFileError(f"'{label}' has a model config nested more than {MAX_CONFIG_DEPTH} levels deep; "
                                 "refusing to load it.")
        if isinstance(value, str) and len(value) > MAX_CONFIG_STRING:
            raise ModelFileError(f"'{label}' has a name or setting of {len(value):,} characters in its model "
                                 f"config (at most {MAX_CONFIG_STRING:,}); refusing to load it.")
        if isinstance(value, dict):
            if value.get("class_name") in MODEL_CLASSES and isinstance(value.get("config"), dict):
                layers = value["config"].get("layers", [])
                if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
                    raise ModelFileError(f"'{label}' has a model config whose layer list is malformed.")
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth + 1) for k in value)
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _config_int(cfg: dict, key: str) -> int | None:
    value = cfg.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _ints(value, n: int) -> list[int]:
    """A kernel size, stride or pool size as n positive ints (Keras accepts one int for all)."""
    values = [value] * n if isinstance(value, int) else list(value) if isinstance(value, list) else []
    return [v if isinstance(v, int) and v > 0 else 1 for v in values[:n]] + [1] * (n - len(values[:n]))


def _spatial(dims: list, kernel: list[int], strides: list[int], padding) -> list:
    out = []
    for size, k, s in zip(dims, kernel, strides):
        if not isinstance(size, int):
            out.append(size)
        elif padding == "same":
            out.append(-(-size // s))
        else:
            out.append(max(1, -(-(size - k + 1) // s)))
    return out


def _layer_cost(cls: str, cfg: dict, shape: list) -> tuple[int, list]:
    """(parameters, output shape without the batch axis) a layer declares, from its config and input shape.

    None in a shape is a size the config does not fix; a layer the estimate does not know passes its
    input shape through and counts no parameters (the built-in layers that hold many are all covered).
    """
    last = shape[-1] if shape and isinstance(shape[-1], int) else UNKNOWN_FEATURES
    def number(key, default=1):
        return _config_int(cfg, key) or default
    if cls == "Dense":
        units = number("units")
        return last * units + units, [*shape[:-1], units] if shape else [units]
    if cls in ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
               "SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D"):
        n = int(cls[-2]) if cls[-2].isdigit() else int(cls[cls.index("D") - 1])
        kernel = _ints(cfg.get("kernel_size"), n)
        strides = _ints(cfg.get("strides"), n)
        area = 1
        for k in kernel:
            area *= k
        filters = number("filters", last * number("depth_multiplier"))
        if cls.startswith("Depthwise"):
            params = area * last * number("depth_multiplier") + filters
        elif cls.startswith("Separable"):
            params = area * last * number("depth_multiplier") + last * number("depth_multiplier") * filters + filters
        else:
            params = area * last * filters + filters
        dims = shape[:-1] if len(shape) == n + 1 else [None] * n
        if "Transpose" in cls:
            dims = [d * s if isinstance(d, int) else d for d, s in zip(dims, strides)]
        else:
            dims = _spatial(dims, kernel, strides, cfg.get("padding"))
        return params, [*dims, filters]
    if cls in ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
               "AveragePooling3D"):
        n = len(shape) - 1
        pool = _ints(cfg.get("pool_size", 2), n)
        strides = _ints(cfg.get("strides") or pool, n)
        return 0, [*_spatial(shape[:-1], pool, strides, cfg.get("padding")), shape[-1]] if shape else shape
    if cls.startswith("Global"):
        return 0, [shape[-1]] if shape else shape
    if cls == "Flatten":
        size = 1
        for d in shape:
            size *= d if isinstance(d, int) else UNKNOWN_FEATURES
        return 0, [size]
    if cls == "Reshape" and isinstance(cfg.get("target_shape"), list):
        return 0, list(cfg["target_shape"])
    if cls == "Embedding":
        dim = number("output_dim")
        return number("input_dim") * dim, [*shape, dim]
    if cls in ("LSTM", "GRU", "SimpleRNN"):
        units = number("units")
        gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[cls]
        out = [*shape[:-1], units] if cfg.get("return_sequences") else [units]
        return gates * units * (last + units + 2), out
    if cls == "KerasLayer":  # a hub module: its weights are its own, its output width may be in the config
        out = cfg.get("output_shape")
        return 0, list(out) if isinstance(out, list) and out else [UNKNOWN_FEATURES]
    if cls in ("BatchNormalization", "LayerNormalization"):
        return 4 * last, shape
    return 0, shape


def _declared_params(config: dict, shape: list | None = None) -> int:
    """A conservative count of the parameters a model config declares, following shapes layer by layer.

    Sequential configs run in order; in a functional one each layer takes the shape of its first
    inbound layer (the configs list layers in an order where inbound layers come first).
    """
    total, shapes = 0, {}
    for layer in _layers(config):
        cls, cfg = layer.get("class_name"), layer.get("config")
        cfg = cfg if isinstance(cfg, dict) else {}
        declared = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        if isinstance(declared, list) and declared:
            shape = list(declared[1:])
        inbound = layer.get("inbound_nodes")
        try:
            first = inbound[0][0][0]
        except (IndexError, KeyError, TypeError):
            first = None
        if isinstance(first, str) and first in shapes:
            shape = shapes[first]
        shape = [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None for d in (shape or [])]
        if cls in MODEL_CLASSES:
            total += _declared_params(layer, shape)
            params = 0
        else:
            params, shape = _layer_cost(cls, cfg, shape)
        total += params
        if isinstance(cfg.get("name"), str):
            shapes[cfg["name"]] = shape
    return total


def _nested_dicts(node):
    """Every dict anywhere inside a JSON value, the value itself included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nested_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nested_dicts(value)


def _expected_shape(cls: str, cfg: dict, role: str) -> list | None:
    """The shape a layer's own config gives one of its weights, None for an axis it leaves to the layer's
    input (or None for the whole weight when the config does not say). Only what the config alone fixes."""
    if cls == "Dense" and _config_int(cfg, "units"):
        units = cfg["units"]
        return {"kernel": [None, units], "bias": [units]}.get(role)
    if cls == "Embedding" and _config_int(cfg, "input_dim") and _config_int(cfg, "output_dim"):
        return [cfg["input_dim"], cfg["output_dim"]] if role == "embeddings" else None
    for n in (1, 2, 3):
        if cls in (f"Conv{n}D", f"Conv{n}DTranspose") and _config_int(cfg, "filters"):
            kernel, filters = _ints(cfg.get("kernel_size"), n), cfg["filters"]
            if role == "bias":
                return [filters]
            if role == "kernel":
                return [*kernel, filters, None] if cls.endswith("Transpose") else [*kernel, None, filters]
        if cls in (f"DepthwiseConv{n}D", f"SeparableConv{n}D"):
            kernel, multiplier = _ints(cfg.get("kernel_size"), n), _config_int(cfg, "depth_multiplier") or 1
            if role == "depthwise_kernel":
                return [*kernel, None, multiplier]
            if role == "pointwise_kernel" and _config_int(cfg, "filters"):
                return [*([1] * n), None, cfg["filters"]]
            if role == "bias" and cls.startswith("Separable") and _config_int(cfg, "filters"):
                return [cfg["filters"]]
    return None


def _check_weight_shapes(reads: list[WeightRead], layers: list[dict], label: str) -> None:
    """Refuse a weight whose declared shape contradicts its layer's config, before it is read.

    Weights are matched to layers by the names Keras gives them ('dense/kernel:0' is the kernel of the layer
    'dense'; an optimizer's 'Adam/m/dense/kernel:0' has its shape too); a weight whose name matches no layer
    is left to the file's budget of unstored bytes.
    """
    by_name = {}
    for layer in layers:
        cfg = layer.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
            by_name.setdefault(cfg["name"], (layer.get("class_name"), cfg))
    for read in reads:
        parts = read.name.split("/")
        if len(parts) < 2 or parts[-2] not in by_name:
            continue
        cls, cfg = by_name[parts[-2]]
        expected = _expected_shape(cls, cfg, parts[-1].split(":")[0])
        shape = read.dataset.shape
        if expected is None or (len(shape) == len(expected)
                                and all(e is None or e == d for e, d in zip(expected, shape))):
            continue
        wanted = "(" + ", ".join("any" if e is None else str(e) for e in expected) + ")"
        raise ModelFileError(f"'{label}' declares the weight '{read.name[:120]}' with shape {shape}, but its layer's "
                             f"config makes it {wanted}; it was not opened.")


def _holds_bytecode(node: dict) -> bool:
    """Keras marks marshalled Python functions as type "lambda" (Lambda's function_type, RNN cell
    wrappers' residual_fn_type, ...) or as class "__lambda__"; loading those runs them."""
    if node.get("class_name") == "__lambda__":
        return True
    return any(isinstance(k, str) and k.endswith("_type") and v == "lambda" for k, v in node.items())


def _allowed_layer_names() -> set[str]:
    import tf_keras

    names = {n for n in dir(tf_keras.layers) if not n.startswith("_")}
    return (names - REFUSED_LAYERS) | {"KerasLayer", *MODEL_CLASSES}


def _parse_attr(raw, label: str, what: str):
    """JSON from an HDF5 attribute: text or bytes within MAX_CONFIG_BYTES (not an array or a number)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            raise ModelFileError(f"'{label}' has an unreadable {what} (not UTF-8 text).") from None
    if not isinstance(raw, str):
        raise ModelFileError(f"'{label}' has a {what} that is not text ({type(raw).__name__}).")
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelFileError(f"'{label}' has a {what} over {megabytes(MAX_CONFIG_BYTES)}; refusing to load it.")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ModelFileError(f"'{label}' has a {what} nested too deeply to read.") from None
    except ValueError:
        raise ModelFileError(f"'{label}' has an unreadable {what}.") from None


def _read_file(path: Path, label: str):
    """(model config, class names, weight reads) of an .h5 file: its raw attributes, read once the file is
    known to keep its data inside itself and within bounds."""
    import h5py

    if not path.is_file():
        raise ModelFileError(f"Model file '{path}' does not exist.")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise ModelFileError(f"'{label}' is larger than {megabytes(MAX_MODEL_BYTES)}; refusing to load it.")
    if not h5py.is_hdf5(str(path)):
        raise ModelFileError(f"'{label}' is not an HDF5 (.h5) model file.")
    try:
        with h5py.File(path, "r") as f, open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            # Links and layouts first: nothing is read until the file is known to keep its data inside itself.
            datasets = walk(f, label, size)
            attributes = AttributeReader(f, fh, label, size)
            raw = attributes.read(f, "model_config", "model config", MAX_CONFIG_BYTES)
            names_raw = attributes.read(f, CLASS_NAMES_ATTR, "list of class names", MAX_CONFIG_BYTES)
            if raw is None and "layer_names" in f.attrs:
                raise ModelFileError(f"'{label}' holds weights only (model.save_weights), not a whole model; "
                                     "save the model with model.save('x.h5').")
            if raw is None or "model_weights" not in f:
                raise ModelFileError(f"'{label}' is an HDF5 file but not a saved Keras model; "
                                     "save one with model.save('x.h5').")
            # Read by tf_keras alone, so measured here but not read.
            attributes.check(f, "training_config", "training config", MAX_CONFIG_BYTES)
            for attr in ("keras_version", "backend"):
                attributes.check(f, attr, "Keras version", MAX_CONFIG_STRING)
            return raw, names_raw, keras_reads(f, attributes, datasets, label)
    except LabError:
        raise
    except Exception as exc:
        raise ModelFileError(f"'{label}' is damaged or truncated ({exc.__class__.__name__}).") from None


def _model_config(raw, label: str) -> dict:
    config = _parse_attr(raw, label, "model config")
    if not isinstance(config, dict) or config.get("class_name") not in MODEL_CLASSES:
        kind = config.get("class_name") if isinstance(config, dict) else "null" if config is None else type(config).__name__
        raise ModelFileError(f"'{label}' holds a '{str(kind)[:80]}', not a Keras model the Lab can load.")
    _check_structure(config, label)
    return config


def _refuse_code(config: dict, layers: list[dict], nested: list[dict], label: str) -> None:
    """Refuse layers that run stored code, stored functions, and any layer class beyond Keras's own."""
    for node in nested:
        if node["class_name"] in REFUSED_LAYERS:
            raise ModelFileError(
                f"'{label}' contains a {node['class_name']} layer, which runs stored Python code when "
                "loaded; refusing to load it."
            )
    if any(_holds_bytecode(node) for node in _nested_dicts(config)):
        raise ModelFileError(f"'{label}' stores a Python function that would run when loaded; refusing to load it.")
    allowed = _allowed_layer_names()
    for layer in layers:
        cls = layer.get("class_name", "?")
        if not isinstance(cls, str):
            raise ModelFileError(f"'{label}' has a layer without a class name; refusing to load it.")
        if cls not in allowed:
            raise ModelFileError(
                f"'{label}' uses a custom layer '{cls}'; only built-in Keras layers and hub.KerasLayer "
                "can be loaded."
            )


def _hub_handles(nested: list[dict], base: Path, label: str, allowed_handle) -> list[str]:
    """Every KerasLayer's handle, "./NAME" made absolute against base; refused where allowed_handle says no."""
    handles = []
    for node in nested:
        if node["class_name"] != "KerasLayer":
            continue
        handle = node.get("config", {}).get("handle") if isinstance(node.get("config"), dict) else None
        if not isinstance(handle, str):
            raise ModelFileError(f"'{label}' has a KerasLayer without a handle string.")
        handle = resolve_relative(handle, base)
        if allowed_handle is not None and not allowed_handle(handle):
            raise ModelFileError(
                f"'{label}' points its KerasLayer at '{handle}', which uploaded models may not use: "
                "only TF Hub / Kaggle URLs and folders inside the Lab's cache or runs folder."
            )
        handles.append(handle)
    return handles


def _check_size(config: dict, layers: list[dict], reads: list[WeightRead], label: str) -> None:
    """What building the model and reading its weights would allocate stays within bounds."""
    declared = _declared_params(config)
    if declared > MAX_DECLARED_PARAMS:
        raise ModelFileError(f"'{label}' declares about {declared / 1e6:,.0f} million parameters; the Lab loads models "
                             f"of up to {MAX_DECLARED_PARAMS / 1e6:,.0f} million. Refusing to build it.")
    check_unstored(reads, declared, label)
    _check_weight_shapes(reads, layers, label)


def _inputs_and_outputs(layers: list[dict]) -> tuple[int | None, int | None, bool]:
    """(input side, output units, whether the last layer is a softmax), each None or False where unsaid."""
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
        return input_size, num_outputs, last["config"].get("activation") == "softmax"
    except (IndexError, KeyError, TypeError, ValueError, AttributeError):
        return input_size, num_outputs, False


def numbered_classes(count: int) -> list[str]:
    """What a model that stores no class names (the article's notebook saves none) calls its classes."""
    return [f"class {i}" for i in range(count)]


def _class_names(names_raw, label: str) -> list[str]:
    if names_raw is None:
        return []
    names = _parse_attr(names_raw, label, "list of class names")
    if (not isinstance(names, list) or len(names) > MAX_CLASSES
            or not all(isinstance(n, str) and len(n) <= MAX_CLASS_NAME for n in names)):
        raise ModelFileError(f"'{label}' stores class names that are not a list of up to {MAX_CLASSES:,} names "
                             f"of up to {MAX_CLASS_NAME} characters; refusing to load it.")
    return names


def inspect_model_file(path: str | Path, allowed_handle=None, name: str | None = None) -> ModelFileInfo:
    """Read an .h5 model's config without deserialising it; refuse anything that could run code.

    allowed_handle, if given, is called with each hub handle and returns False to refuse it (the web
    upload path only accepts hub URLs and folders the Lab owns). name is what messages call the file
    (an upload's own name rather than the one it was stored under); by default its file name.
    """
    path = Path(path).expanduser()
    label = name or path.name
    raw, names_raw, reads = _read_file(path, label)
    config = _model_config(raw, label)
    layers = list(_walk_layers(config))
    # Wrappers (TimeDistributed, Bidirectional, RNN cells) nest layer configs under keys that
    # _walk_layers does not follow, so the checks guarding against stored code look at every level.
    nested = [node for node in _nested_dicts(config) if isinstance(node.get("class_name"), str)]
    _refuse_code(config, layers, nested, label)
    handles = _hub_handles(nested, path.parent, label, allowed_handle)
    _check_size(config, layers, reads, label)
    input_size, num_outputs, softmax = _inputs_and_outputs(layers)
    return ModelFileInfo(path, input_size, num_outputs, _class_names(names_raw, label), handles, softmax,
                         sum(r.dataset.declared for r in reads))


def _keras_layer_class(base: Path):
    """hub.KerasLayer, except that a "./NAME" handle is made absolute against base before loading."""
    import tensorflow_hub as hub

    class KerasLayer(hub.KerasLayer):
        @classmethod
        def from_config(cls, config):
            return hub.KerasLayer(**{**config, "handle": resolve_relative(config.get("handle"), base)})

    return KerasLayer


def check_hub_module(handle: str, label: str) -> None:
    """Before the model file `label` loads the module at handle: it is reachable, and a folder is a SavedModel
    whose graph runs nothing but TensorFlow's own operations (check_savedmodel)."""
    try:
        check_available(handle)
    except LabError as exc:
        raise ModelFileError(f"'{label}' needs its hub module to load. {exc}") from None
    if is_local(handle):
        check_savedmodel(handle)


def load_model(path: str | Path, allowed_handle=None, name: str | None = None):
    """Inspect, then load the .h5 with custom_objects={"KerasLayer": hub.KerasLayer} (the article's way).

    A SavedModel folder named as a hub handle is checked with check_savedmodel first; one named "./NAME"
    is looked for beside the file (a portable run's backbone). Returns (model, ModelFileInfo).
    allowed_handle and name as for inspect_model_file.
    """
    import tf_keras

    configure_caches()
    label = name or Path(path).name
    info = inspect_model_file(path, allowed_handle=allowed_handle, name=label)
    for handle in info.hub_handles:
        check_hub_module(handle, label)
    try:
        model = tf_keras.models.load_model(
            str(path), custom_objects={"KerasLayer": _keras_layer_class(Path(path).expanduser().parent)})
    except LabError:
        raise
    except Exception as exc:
        raise ModelFileError(
            f"'{label}' could not be loaded ({error_line(exc)})."
        ) from None
    if not info.class_names and info.num_outputs:
        info = dataclasses.replace(info, class_names=numbered_classes(info.num_outputs))
    return model, info


@dataclass(frozen=True)
class HubHead:
    """The Lab's transfer model as it saves one, read without building it: a frozen hub backbone and one Dense."""
    handle: str  # the backbone's, resolved against the file's folder
    backbone_digest: str  # of the backbone's stored weights (backbone_digest), to tell a fine-tuned copy apart
    kernel: object  # numpy float32 (features, classes)
    bias: object  # numpy float32 (classes,)


# What the Lab's KerasLayer config holds; any other option (a signature, an output key, arguments) changes
# what the layer computes, so such a model is built whole.
PLAIN_HUB_KEYS = {"name", "trainable", "dtype", "batch_input_shape", "handle"}


def backbone_digest(arrays) -> str:
    """One value for a backbone's weights in order (shape and float32 bytes of each)."""
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array, dtype=np.float32)
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def read_hub_head(path: str | Path, info: ModelFileInfo) -> HubHead | None:
    """The file's frozen backbone and Dense head when it is exactly an input, a plain frozen KerasLayer and a
    float32 Dense with a bias and a linear or softmax activation; None for any other model.

    Only for a file inspect_model_file has passed (info): its layout and sizes are checked already.
    """
    import h5py
    import numpy as np

    try:
        with h5py.File(Path(path).expanduser(), "r") as f:
            config = json.loads(f.attrs["model_config"])
            if config.get("class_name") != "Sequential":
                return None
            layers = [layer for layer in _layers(config) if layer.get("class_name") != "InputLayer"]
            if [layer.get("class_name") for layer in layers] != ["KerasLayer", "Dense"]:
                return None
            hub_cfg, dense_cfg = (layer.get("config") or {} for layer in layers)
            if (set(hub_cfg) - PLAIN_HUB_KEYS or hub_cfg.get("trainable")
                    or hub_cfg.get("dtype", "float32") != "float32"
                    or dense_cfg.get("activation") not in ("linear", "softmax") or not dense_cfg.get("use_bias")
                    or dense_cfg.get("dtype", "float32") != "float32"):
                return None
            weights = f["model_weights"]

            def arrays(layer_name: str) -> list:
                group = weights[layer_name]
                names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
                return [group[n][()] for n in names]

            backbone, dense = arrays(hub_cfg["name"]), arrays(dense_cfg["name"])
        if len(dense) != 2 or dense[0].ndim != 2 or dense[1].shape != (dense[0].shape[1],):
            return None
        return HubHead(info.hub_handles[0], backbone_digest(backbone), dense[0].astype(np.float32),
                       dense[1].astype(np.float32))
    except (KeyError, TypeError, ValueError, AttributeError, OSError):
        return None  # not the Lab's layout after all: built whole, whose loading says what is wrong


def rewrite_hub_handles(src: str | Path, dst: str | Path, mapping: dict[str, str]) -> None:
    """Copy an .h5 model to dst with each KerasLayer handle that (resolved against src's folder) is a key of
    mapping replaced by its value; nothing is deserialised."""
    import shutil

    import h5py

    src, dst = Path(src), Path(dst)
    shutil.copyfile(src, dst)
    with h5py.File(dst, "a") as f:
        raw = f.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        for node in _nested_dicts(config):
            if node.get("class_name") == "KerasLayer" and isinstance(node.get("config"), dict):
                handle = resolve_relative(node["config"].get("handle"), src.parent)
                if handle in mapping:
                    node["config"]["handle"] = mapping[handle]
        f.attrs["model_config"] = json.dumps(config)


def save_model(model, path: str | Path, class_names: list[str]) -> None:
    """Save as HDF5 (architecture, weights, compile settings, optimizer state) plus the class names.

    A failed write raises OSError with its errno and a plain reason: h5py's own message spells out HDF5's
    internals (file descriptor, buffer address, offsets) over two lines.
    """
    import h5py

    try:
        with warnings.catch_warnings():
            # HDF5 is "legacy" to Keras, but it is the format the article saves and reloads, on purpose.
            warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\\(\\)`.*")
            model.save(str(path), save_format="h5", include_optimizer=True)
        with h5py.File(path, "a") as f:
            f.attrs[CLASS_NAMES_ATTR] = json.dumps(list(class_names))
    except OSError as exc:
        raise _save_failure(exc, Path(path)) from None


def _save_failure(exc: OSError, path: Path) -> OSError:
    """The same failure with one line a person can act on: the disk is full (and how much is free), or the
    system's words for its errno."""
    import errno

    code, free = exc.errno, free_space(path.parent)
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason = "the disk is full" if code == errno.ENOSPC else "the disk quota is used up"
        reason += f": {megabytes(free)} free" if free is not None else ""
    elif code:
        reason = os.strerror(code)
    else:
        reason = "the model file could not be written"
    return OSError(code or errno.EIO, reason)


def store_uploaded_model(data: bytes | BinaryIO, name: str, dest_dir: str | Path | None = None,
                         max_bytes: int | None = None) -> Path:
    """Keep a model file uploaded through the web page in the uploads folder; return where it is.

    Checked as an untrusted upload (size, then inspect_model_file with web_upload_handle_allowed) before it
    is kept, and named by a hash of its content, never by the uploader. Nothing is deserialised here.
    """
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    if not size:
        raise ModelFileError(f"'{name}' is empty (0 bytes).")
    if size > max_bytes:
        raise ModelFileError(f"'{name}' is {megabytes(size)}; uploaded models may be at most {megabytes(max_bytes)}.")
    dest = Path(dest_dir) if dest_dir is not None else uploads_dir()
    dest.mkdir(parents=True, exist_ok=True)
    partial = dest / f".partial-{secrets.token_hex(8)}.h5"
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out:
            for chunk in iter(lambda: stream.read(1024 * 1024), b""):
                digest.update(chunk)
                out.write(chunk)
        inspect_model_file(partial, allowed_handle=web_upload_handle_allowed, name=name)
        final = dest / f"{UPLOAD_PREFIX}{digest.hexdigest()[:16]}.h5"
        if final.is_file():
            partial.unlink()
        else:
            os.replace(partial, final)  # whole or absent: a reader never sees half a model file
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _prune_uploads(dest, keep=final)
    return final


def _prune_uploads(dest: Path, keep: Path) -> None:
    """Remove all but the KEPT_UPLOADS most recently stored uploaded models (never keep itself)."""
    stored = []
    for path in dest.glob(f"{UPLOAD_PREFIX}*.h5"):
        try:
            stored.append((path.stat().st_mtime, path))
        except OSError:
            continue  # removed meanwhile by another session
    stored.sort(reverse=True)
    for _, path in stored[KEPT_UPLOADS:]:
        if path != keep:
            path.unlink(missing_ok=True)
