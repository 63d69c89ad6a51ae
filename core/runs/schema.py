"""What a run folder's JSON may hold: checked before a run is listed, imported or drawn.

A run folder can come from a stranger's zip, and one bad file would take down every page that lists runs.
Each file is bounded in bytes before it is parsed, then in depth, string length and numbers (no infinities;
NaN only where the Lab writes it), then checked field by field; unknown extra fields are allowed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from core.settings.config import MAX_CLASSES  # shared with the data sources, which refuse bigger datasets
from core.settings.errors import LabError

# Bytes each file may have; a real run's files are a few KB (history: ~150 bytes an epoch).
MAX_FILE_BYTES = {
    "config.json": 2 * 10**6,  # dataset notes and skipped-file names can make it long
    "history.json": 4 * 10**6,
    "metrics.json": 256 * 10**3,
    "layers.json": 4 * 10**6,
    "evaluation.json": 16 * 10**6,  # a confusion matrix grows with the square of the classes
}
MAX_DEPTH = 10  # the deepest the Lab writes is 5 (config.json's dataset -> counts -> split -> class)
MAX_STRING = 4096  # characters: a path or a handle; names are far shorter
MAX_NAME = 200  # characters in a class name or model kind
MAX_EPOCHS = 10_000
MAX_ITEMS = 200_000  # values in one file
MAX_PARAMS = 10**13
# finished_at: a moment the Lab could have finished a run, and one time.localtime can format anywhere.
EARLIEST, LATEST = 946_684_800, 4_102_444_800  # 2000-01-01 and 2100-01-01, UTC
LOSS_FIELDS = ("loss", "val_loss")
ACCURACY_FIELDS = ("accuracy", "val_accuracy")


class RunSchemaError(LabError):
    """A run folder's JSON does not have the shape the Lab writes."""


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _walk(value, file: str) -> None:
    """Depth, string length, item count and finiteness of every value in a parsed file."""
    stack, items = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        items += 1
        if depth > MAX_DEPTH:
            raise RunSchemaError(f"{file} is nested more than {MAX_DEPTH} levels deep.")
        if items > MAX_ITEMS:
            raise RunSchemaError(f"{file} holds more than {MAX_ITEMS:,} values.")
        if isinstance(node, str) and len(node) > MAX_STRING:
            raise RunSchemaError(f"{file} holds a text of {len(node):,} characters (at most {MAX_STRING:,}).")
        elif isinstance(node, float) and math.isinf(node):
            raise RunSchemaError(f"{file} holds an infinite number.")
        elif isinstance(node, dict):
            for key, child in node.items():
                if len(key) > MAX_STRING:
                    raise RunSchemaError(f"{file} holds a key of {len(key):,} characters.")
                stack.append((child, depth + 1))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def load_json(path: Path, name: str | None = None):
    """Parse one run file within MAX_FILE_BYTES and the bounds above; RunSchemaError saying what is wrong."""
    file = name or path.name
    limit = MAX_FILE_BYTES.get(path.name, MAX_FILE_BYTES["metrics.json"])
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as exc:
        raise RunSchemaError(f"{file} cannot be read ({exc.strerror or exc.__class__.__name__}).") from None
    if len(raw) > limit:
        raise RunSchemaError(f"{file} is over {limit / 1e6:g} MB, more than a run writes.")
    try:
        # Infinity is refused here; NaN stays, because the Lab writes it for a metric it could not compute.
        value = json.loads(raw, parse_constant=lambda c: math.nan if c == "NaN" else _refuse_constant(c))
    except RecursionError:
        raise RunSchemaError(f"{file} is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunSchemaError(f"{file} is not valid JSON ({exc.__class__.__name__}).") from None
    _walk(value, file)
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fraction(value) -> bool:
    """An accuracy: within [0, 1], or NaN where it could not be computed."""
    return _is_number(value) and (math.isnan(value) or 0 <= value <= 1)


def _name(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


def _optional(section: dict, key: str, ok, what: str, file: str, nullable: bool = False) -> None:
    """A field that may be absent (older runs lack some) but, if present, passes ok; null only if nullable.

    file names where section sits, as the message's start ("config.json's", "history.json has ...:").
    """
    if key in section and not (nullable and section[key] is None) and not ok(section[key]):
        raise RunSchemaError(f"{file} '{key}' is not {what}.")


def check_config(config) -> None:
    file = "config.json's"
    if not isinstance(config, dict):
        raise RunSchemaError("config.json and metrics.json must each hold a JSON object.")
    names = config.get("class_names")
    if not isinstance(names, list) or not 0 < len(names) <= MAX_CLASSES or not all(_name(n) for n in names):
        raise RunSchemaError(f"config.json must list 1 to {MAX_CLASSES:,} class names of 1 to {MAX_NAME} characters.")
    if len(set(names)) != len(names):
        raise RunSchemaError("config.json lists a class name twice.")
    for key in ("data", "train", "dataset"):
        if not isinstance(config.get(key, {}), dict):
            raise RunSchemaError(f"{file} '{key}' is not a JSON object.")
    data, train = config.get("data", {}), config.get("train", {})
    _optional(data, "source", lambda v: isinstance(v, str), "a text", file)
    _optional(data, "image_size", lambda v: _is_int(v) and 1 <= v <= 4096, "a whole number from 1 to 4096", file)
    _optional(data, "batch_size", lambda v: _is_int(v) and 1 <= v <= 65536, "a whole number from 1 to 65536", file)
    _optional(data, "limit", lambda v: _is_int(v) and v >= 0, "a whole number", file, nullable=True)
    _optional(data, "seed", _is_int, "a whole number", file)
    _optional(data, "val_fraction", lambda v: _is_number(v) and 0 < v < 1, "a fraction between 0 and 1", file)
    _optional(data, "augment", lambda v: isinstance(v, bool), "true or false", file)
    _optional(train, "model", _name, f"a name of 1 to {MAX_NAME} characters", file)
    _optional(train, "handle", lambda v: isinstance(v, str), "a text", file, nullable=True)
    for key in ("epochs", "fine_tune_epochs"):
        _optional(train, key, lambda v: _is_int(v) and 0 <= v <= MAX_EPOCHS, "a number of epochs", file)
    for key in ("learning_rate", "fine_tune_learning_rate"):
        _optional(train, key, lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "a learning rate", file)
    counts = config.get("dataset", {}).get("counts")
    if counts is not None and not (isinstance(counts, dict) and all(
            isinstance(split, dict) and all(_is_int(n) and n >= 0 for n in split.values())
            for split in counts.values())):
        raise RunSchemaError(f"{file} dataset counts are not image counts per split and class.")


def check_history(history) -> None:
    if not isinstance(history, list) or not history:
        raise RunSchemaError("history.json holds no epochs; only finished runs can be listed.")
    if len(history) > MAX_EPOCHS:
        raise RunSchemaError(f"history.json holds {len(history):,} epochs (at most {MAX_EPOCHS:,}).")
    file = "history.json has an epoch that is not a set of numbers:"
    for row in history:
        if not isinstance(row, dict):
            raise RunSchemaError("history.json has an epoch that is not a set of numbers.")
        for key in LOSS_FIELDS:
            _optional(row, key, _is_number, "a number", file)
        for key in ACCURACY_FIELDS:
            _optional(row, key, _fraction, "an accuracy between 0 and 1", file)
        _optional(row, "seconds", lambda v: _is_number(v) and v >= 0 and not math.isnan(v), "a duration", file)
        _optional(row, "phase", _name, "a phase name", file)


def check_metrics(metrics) -> None:
    file = "metrics.json's"
    if not isinstance(metrics, dict):
        raise RunSchemaError("config.json and metrics.json must each hold a JSON object.")
    _optional(metrics, "finished_at", lambda v: _is_number(v) and EARLIEST <= v <= LATEST,
              "a time between the years 2000 and 2100", file)
    for key in ("total_params", "trainable_params"):
        _optional(metrics, key, lambda v: _is_int(v) and 0 <= v <= MAX_PARAMS, "a parameter count", file)
    for key in ("epochs_completed", "best_epoch", "train_images", "val_images", "skipped_images"):
        _optional(metrics, key, lambda v: _is_int(v) and v >= 0, "a whole number", file)
    for key in ("final_val_accuracy", "best_val_accuracy"):
        _optional(metrics, key, _fraction, "an accuracy between 0 and 1", file)
    for key in ("train_seconds", "feature_seconds", "seconds_per_epoch", "model_size_mb", "final_val_loss"):
        _optional(metrics, key, _is_number, "a number", file)
    _optional(metrics, "stopped_early", lambda v: isinstance(v, bool), "true or false", file)
    _optional(metrics, "model", _name, f"a name of 1 to {MAX_NAME} characters", file)


def check_layers(layers) -> None:
    """layers.json: the table of layers the Experiments page shows."""
    if not isinstance(layers, list) or not all(
            isinstance(r, dict) and all(isinstance(v, (str, int, float, bool, list, type(None))) for v in r.values())
            for r in layers):
        raise RunSchemaError("layers.json is not a list of layers.")
    for row in layers:
        _optional(row, "params", lambda v: _is_int(v) and 0 <= v <= MAX_PARAMS, "a parameter count", "layers.json")


def load_run_json(folder: Path) -> tuple[dict, list, dict]:
    """(config, history, metrics) of a run folder, each checked; RunSchemaError naming the first problem."""
    config = load_json(folder / "config.json")
    check_config(config)
    history = load_json(folder / "history.json")
    check_history(history)
    metrics = load_json(folder / "metrics.json")
    check_metrics(metrics)
    return config, history, metrics


def load_layers(folder: Path) -> list[dict] | None:
    """layers.json, checked, or None if the run has none or a damaged one (the text summary stands in)."""
    path = folder / "layers.json"
    if not path.is_file():
        return None
    try:
        layers = load_json(path)
        check_layers(layers)
    except RunSchemaError:
        return None
    return layers
