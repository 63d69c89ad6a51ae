"""Which operations a SavedModel backbone may contain: an allow-list of what an image feature extractor needs.

A SavedModel is a program, and TensorFlow gains operations that read files, reach the network or run Python
with every release, so a deny-list is always one short. Every operation in the graph and its functions must
be one the Lab's own backbones and TF Hub's image feature vectors use.
"""
from __future__ import annotations

import graphlib
from pathlib import Path

from core.settings.errors import LabError, ModelFileError
from core.settings.text import megabytes

# The inputs, constants and plumbing tf.function writes around any computation.
_PLUMBING = {
    "Placeholder", "PlaceholderWithDefault", "Const", "Identity", "IdentityN", "NoOp", "StopGradient",
    "Shape", "Cast",
}
# Calls between the module's own functions (checked to be in its library, without recursion) and the
# two-way branches Keras emits for its `training` argument (If), or graphs converted from TF1 code (Switch and
# Merge). No loops: a While, or TF1's Enter/NextIteration, can spin forever.
_CALLS = {"StatefulPartitionedCall", "PartitionedCall", "If", "StatelessIf", "Switch", "Merge"}
# The module's own variables: read for inference, updated by batch norm when fine-tuned.
_VARIABLES = {
    "ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "DisableCopyOnRead",
}
_LAYERS = {
    "Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2", "BiasAdd",
    "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3",
    "Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "Softmax", "Erf",
    "MaxPool", "AvgPool", "Mean", "Max", "Min", "Sum",
    "ResizeBilinear", "ResizeNearestNeighbor",
}
_SHAPES = {
    "Reshape", "Squeeze", "ExpandDims", "ConcatV2", "Pad", "PadV2", "MirrorPad", "StridedSlice", "Slice",
    "Pack", "Unpack", "Transpose",
}
_ARITHMETIC = {
    "Add", "AddV2", "AddN", "Sub", "Mul", "RealDiv", "Div", "DivNoNan", "Maximum", "Minimum", "Neg", "Abs",
    "Square", "Sqrt", "Rsqrt", "Exp", "Log", "SquaredDifference", "ClipByValue", "Select", "SelectV2",
    "Equal", "Greater", "GreaterEqual", "Less", "LessEqual", "LogicalAnd", "LogicalOr", "LogicalNot",
}
# String handling of the save function tf.saved_model writes (the checkpoint's file names).
_SAVER_STRINGS = {"StringJoin", "StaticRegexFullMatch"}
ALLOWED_OPS = frozenset(_PLUMBING | _CALLS | _VARIABLES | _LAYERS | _SHAPES | _ARITHMETIC | _SAVER_STRINGS)
# Checkpoint reading and writing: only inside the SavedModel's own save and restore functions.
CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename"})
# A variable's handle: only in the top-level graph, where tf.saved_model declares each variable once; inside a
# function it could name another model's variable by its shared name.
GRAPH_ONLY_OPS = frozenset({"VarHandleOp"})
MAX_SAVEDMODEL_PB_BYTES = 200 * 10**6
MAX_FUNCTIONS = 20_000
MAX_NAME = 200  # of an operation or function named in a message
# Where a graph has several refused operations the message names one whose name says it reaches outside (a
# ReadFile rather than the StringLength that measures what it read); the ranking is wording only.
_OUTSIDE_HINTS = (("File", "DataService", "Py", "Rpc", "Reader", "Writer", "Summary", "Print", "Remote", "Debug"),
                  ("Dataset", "Iterator", "Save", "Restore", "Table", "Send", "Recv", "Collective"))


def _rank(op: str) -> int:
    return next((rank for rank, hints in enumerate(_OUTSIDE_HINTS) if any(h in op for h in hints)), len(_OUTSIDE_HINTS))


def _refuse(name: str, what: str) -> ModelFileError:
    return ModelFileError(f"The SavedModel '{name}' {what}; refusing to load it.")


def _read(folder: Path, name: str):
    from tensorflow.core.protobuf import saved_model_pb2

    pb = folder / "saved_model.pb"
    try:
        if pb.stat().st_size > MAX_SAVEDMODEL_PB_BYTES:
            raise _refuse(name, f"is larger than {megabytes(MAX_SAVEDMODEL_PB_BYTES)}")
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString(pb.read_bytes())
    except LabError:
        raise
    except Exception as exc:
        raise ModelFileError(f"The SavedModel '{name}' is unreadable ({exc.__class__.__name__}).") from None
    return saved


def _called(node) -> list[str]:
    """Names of the functions a node's attributes call (a call's f, an If's branches)."""
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        elif value.HasField("list"):
            names.extend(f.name for f in value.list.func)
    return names


def _is_op(name: str) -> bool:
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(name) is not None


def _check_graph(graph, name: str, refused: dict[str, None]) -> None:
    """Checks one meta graph; operations outside the allow-list are added to refused (in order of appearance)."""
    library = {f.signature.name: f for f in graph.graph_def.library.function}
    if len(library) > MAX_FUNCTIONS:
        raise _refuse(name, f"has {len(library):,} functions (a feature extractor has a few dozen at most)")
    # A function named like an operation would make a node ambiguous between the two.
    for fname in library:
        if _is_op(fname):
            raise _refuse(name, f"defines a function named like the {fname[:MAX_NAME]} operation")
    # The saver's save and restore nodes call the functions that do checkpoint I/O.
    saver_nodes = {graph.saver_def.save_tensor_name.split(":")[0], graph.saver_def.restore_op_name} - {""}
    savers = {called for node in graph.graph_def.node if node.name in saver_nodes for called in _called(node)}
    calls: dict[str, set[str]] = {}
    for function, nodes in [("", graph.graph_def.node)] + [(f, library[f].node_def) for f in library]:
        out = calls.setdefault(function, set())
        for node in nodes:
            op = node.op
            if op in library:  # a node may call a library function directly by its name
                out.add(op)
            elif not (op in ALLOWED_OPS or (op in CHECKPOINT_OPS and function in savers)
                      or (op in GRAPH_ONLY_OPS and function == "")):
                refused[op] = None
            for called in _called(node):
                if called not in library:
                    raise _refuse(name, f"calls '{called[:MAX_NAME]}', which is not one of its own functions")
                out.add(called)
    _check_acyclic(calls, name)


def _check_acyclic(calls: dict[str, set[str]], name: str) -> None:
    """A function that calls itself, directly or round a circle, never finishes being inlined."""
    try:
        graphlib.TopologicalSorter(calls).prepare()
    except graphlib.CycleError as exc:
        raise _refuse(name, f"has a function that calls itself ('{exc.args[1][0][:MAX_NAME]}')") from None


def check_savedmodel(folder: str | Path) -> None:
    """Refuse a SavedModel that could do anything but compute features from an image, read without running it.

    Every node of every meta graph and of every function in its library must be an ALLOWED_OPS operation
    (checkpoint I/O only in the saver's own functions), and functions may only call the library's functions,
    never in a circle. Messages name the folder by its name alone, not where it is on the server.
    """
    folder = Path(folder)
    name = folder.name[:MAX_NAME]
    saved = _read(folder, name)
    refused: dict[str, None] = {}
    for graph in saved.meta_graphs:
        _check_graph(graph, name, refused)
    if refused:
        op = min(refused, key=_rank)
        raise _refuse(name, f"contains a {op[:MAX_NAME]} operation, which is not among the operations of an image "
                            "feature extractor")
