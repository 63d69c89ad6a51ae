"""Saving and loading .h5 models the article's way, after checking the file is safe to deserialise.

tf_keras.models.load_model runs a Lambda layer's stored Python bytecode while loading (measured: a file
was written on load), so the model config is read with h5py and checked first: only tf_keras's own layers
and hub.KerasLayer are allowed, and a KerasLayer's handle must be resolvable without hanging.
"""
from __future__ import annotations

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

from core.models.hub import resolve_relative
from core.settings.errors import LabError, ModelFileError
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


def inspect_model_file(path: str | Path, allowed_handle=None, name: str | None = None) -> ModelFileInfo:
    """Read an .h5 model's config without deserialising it; refuse anything that could run code.

    allowed_handle, if given, is called with each hub handle and returns False to refuse it (the web
    upload path only accepts hub URLs and folders the Lab owns). name is what messages call the file
    (an upload's own name rather than the one it was stored under); by default its file name.
    """
    import h5py

    path = Path(path).expanduser()
    label = name or path.name
    if not path.is_file():
        raise ModelFileError(f"Model file '{path}' does not exist.")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise ModelFileError(f"'{label}' is larger than {megabytes(MAX_MODEL_BYTES)}; refusing to load it.")
    if not h5py.is_hdf5(str(path)):
        raise ModelFileError(f"'{label}' is not an HDF5 (.h5) model file.")
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            names_raw = f.attrs.get(CLASS_NAMES_ATTR)
            if raw is None and "layer_names" in f.attrs:
                raise ModelFileError(f"'{label}' holds weights only (model.save_weights), not a whole model; "
                                     "save the model with model.save('x.h5').")
            if raw is None or "model_weights" not in f:
                raise ModelFileError(f"'{label}' is an HDF5 file but not a saved Keras model; "
                                     "save one with model.save('x.h5').")
    except LabError:
        raise
    except Exception as exc:
        raise ModelFileError(f"'{label}' is damaged or truncated ({exc.__class__.__name__}).") from None
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError:
        raise ModelFileError(f"'{label}' has an unreadable model config.") from None
    if config.get("class_name") not in ("Sequential", "Functional", "Model"):
        raise ModelFileError(f"'{label}' holds a '{config.get('class_name')}', not a Keras model the Lab can load.")
    allowed = _allowed_layer_names()
    layers = list(_walk_layers(config))
    # Wrappers (TimeDistributed, Bidirectional, RNN cells) nest layer configs under keys that
    # _walk_layers does not follow, so the checks guarding against stored code look at every level.
    nested = [node for node in _nested_dicts(config) if isinstance(node.get("class_name"), str)]
    for node in nested:
        if node["class_name"] in REFUSED_LAYERS:
            raise ModelFileError(
                f"'{label}' contains a {node['class_name']} layer, which runs stored Python code when "
                "loaded; refusing to load it."
            )
    if any(_holds_bytecode(node) for node in _nested_dicts(config)):
        raise ModelFileError(f"'{label}' stores a Python function that would run when loaded; refusing to load it.")
    for layer in layers:
        cls = layer.get("class_name", "?")
        if cls not in allowed:
            raise ModelFileError(
                f"'{label}' uses a custom layer '{cls}'; only built-in Keras layers and hub.KerasLayer "
                "can be loaded."
            )
    handles = []
    for node in nested:
        if node["class_name"] != "KerasLayer":
            continue
        handle = node.get("config", {}).get("handle") if isinstance(node.get("config"), dict) else None
        if not isinstance(handle, str):
            raise ModelFileError(f"'{label}' has a KerasLayer without a handle string.")
        handle = resolve_relative(handle, path.parent)
        if allowed_handle is not None and not allowed_handle(handle):
            raise ModelFileError(
                f"'{label}' points its KerasLayer at '{handle}', which uploaded models may not use: "
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


def _keras_layer_class(base: Path):
    """hub.KerasLayer, except that a "./NAME" handle is made absolute against base before loading."""
    import tensorflow_hub as hub

    class KerasLayer(hub.KerasLayer):
        @classmethod
        def from_config(cls, config):
            return hub.KerasLayer(**{**config, "handle": resolve_relative(config.get("handle"), base)})

    return KerasLayer


def load_model(path: str | Path, allowed_handle=None, name: str | None = None):
    """Inspect, then load the .h5 with custom_objects={"KerasLayer": hub.KerasLayer} (the article's way).

    A SavedModel folder named as a hub handle is checked with check_savedmodel first; one named "./NAME"
    is looked for beside the file (a portable run's backbone). Returns (model, ModelFileInfo).
    allowed_handle and name as for inspect_model_file.
    """
    import tf_keras

    from core.models.hub import check_available, is_local
    from core.settings.paths import configure_caches

    configure_caches()
    label = name or Path(path).name
    info = inspect_model_file(path, allowed_handle=allowed_handle, name=label)
    for handle in info.hub_handles:
        try:
            check_available(handle)
        except LabError as exc:
            raise ModelFileError(f"'{label}' needs its hub module to load. {exc}") from None
        if is_local(handle):
            check_savedmodel(handle)
    try:
        model = tf_keras.models.load_model(
            str(path), custom_objects={"KerasLayer": _keras_layer_class(Path(path).expanduser().parent)})
    except LabError:
        raise
    except Exception as exc:
        raise ModelFileError(
            f"'{label}' could not be loaded ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})."
        ) from None
    if not info.class_names and info.num_outputs:
        info = ModelFileInfo(info.path, info.input_size, info.num_outputs,
                             [f"class {i}" for i in range(info.num_outputs)], info.hub_handles, info.softmax_output)
    return model, info


# Operations that reach outside the graph: files, Python, summaries, remote calls. A SavedModel is a program;
# one that came in a stranger's run zip must not read or write the server's files when it runs.
OUTSIDE_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst", "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "PrintV2", "DecodeProtoV2", "EncodeProto", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
    "LoadAndRemapMatrix", "GenerateVocabRemapping", "Save", "SaveSlices", "Restore", "RestoreSlice",
    "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2",
    "TextLineDataset", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "SqlDataset",
    "ExperimentalSqlDataset", "LMDBDataset", "ExperimentalLMDBDataset", "SnapshotDataset", "SnapshotDatasetV2",
    "SaveDataset", "SaveDatasetV2", "LoadDataset", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "TFRecordReader",
    "TFRecordReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "LMDBReader", "IdentityReader",
    "IdentityReaderV2", "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteImageSummary", "WriteAudioSummary", "WriteHistogramSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "ImportEvent", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "Rpc",
    "TryRpc", "RpcServer", "RpcClient", "RpcCall", "RpcServerStart", "RpcServerRegister",
})
# Checkpoint reading and writing, allowed only inside the SavedModel's own save and restore functions.
CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename"})
MAX_SAVEDMODEL_PB_BYTES = 200 * 10**6


def check_savedmodel(folder: str | Path) -> None:
    """Refuse a SavedModel whose graph reaches outside itself (OUTSIDE_OPS, or checkpoint I/O outside its
    save and restore functions), read without running any of it."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(folder) / "saved_model.pb"
    try:
        if pb.stat().st_size > MAX_SAVEDMODEL_PB_BYTES:
            raise ModelFileError(f"The SavedModel '{folder}' is larger than {megabytes(MAX_SAVEDMODEL_PB_BYTES)}.")
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString(pb.read_bytes())
    except LabError:
        raise
    except Exception as exc:
        raise ModelFileError(f"The SavedModel '{folder}' is unreadable ({exc.__class__.__name__}).") from None
    for graph in saved.meta_graphs:
        savers = set()
        for node in graph.graph_def.node:
            # The saver's save and restore ops call the functions that do checkpoint I/O.
            if node.name in (graph.saver_def.save_tensor_name.split(":")[0], graph.saver_def.restore_op_name):
                savers.add(node.attr["f"].func.name)
        bodies = [("", graph.graph_def.node)] + [(f.signature.name, f.node_def) for f in graph.graph_def.library.function]
        for function, nodes in bodies:
            for node in nodes:
                if node.op in OUTSIDE_OPS or (node.op in CHECKPOINT_OPS and function not in savers):
                    raise ModelFileError(f"The SavedModel '{folder}' contains a {node.op} operation, which reaches "
                                         "outside the model (files or code); refusing to load it.")


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
    """Save as HDF5 (architecture, weights, compile settings, optimizer state) plus the class names."""
    import h5py

    with warnings.catch_warnings():
        # HDF5 is "legacy" to Keras, but it is the format the article saves and reloads, on purpose.
        warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\\(\\)`.*")
        model.save(str(path), save_format="h5", include_optimizer=True)
    with h5py.File(path, "a") as f:
        f.attrs[CLASS_NAMES_ATTR] = json.dumps(list(class_names))


def store_uploaded_model(data: bytes | BinaryIO, name: str, dest_dir: str | Path | None = None,
                         max_bytes: int | None = None) -> Path:
    """Keep a model file uploaded through the web page in the uploads folder; return where it is.

    The file is checked as an untrusted upload (size limit, then inspect_model_file with
    core.models.hub.web_upload_handle_allowed) before it is kept, so a refused file never stays on disk. Its
    name comes from a hash of its content, never from the uploader: the same file uploaded again, or by
    another session, is stored once. Nothing is deserialised here; load_model does that later.
    """
    from core.models.hub import web_upload_handle_allowed
    from core.settings.paths import uploads_dir

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
