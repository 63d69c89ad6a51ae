"""Run directories (their layout: docs/runs.md): one folder per experiment, listed and reopened later.

A run is written into runs/.incomplete-<id>/ and renamed once every file is in place, so a killed process
never leaves a folder that looks complete.
"""
from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.runs.schema import RunSchemaError, load_layers, load_run_json
from core.settings.config import ModelKind, model_label, plain_label
from core.settings.errors import LabError
from core.settings.files import write_json  # run files are written whole: readers never see half of one
from core.settings.processes import pid_alive

logger = logging.getLogger(__name__)

INCOMPLETE_PREFIX = ".incomplete-"
REQUIRED_FILES = ("config.json", "history.json", "metrics.json", "model.h5")
STALE_SECONDS = 6 * 3600  # an unfinished run folder untouched this long belongs to a dead process
# A writer records its pid right after creating its folder; one without a pid file this old never will.
ORPHAN_SECONDS = 60
MAX_SUMMARY_CHARS = 200_000  # MobileNetV2's full Keras summary is about 40,000


def new_run_id(model: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{secrets.token_hex(2)}"


def disk_error(exc: OSError, doing: str, where: Path) -> LabError:
    """One line for a full, read-only or otherwise failing disk: what failed, where, and what to do."""
    reason = exc.strerror or exc.__class__.__name__
    return LabError(f"Could not {doing} in {where} ({reason}); free disk space or make that folder writable "
                    "(LAB_RUNS_DIR chooses another runs folder), then try again.")


class RunWriter:
    """Collects a run's files in a hidden folder and publishes it with one rename."""

    def __init__(self, runs_dir: Path, run_id: str):
        self.runs_dir = Path(runs_dir)
        self.run_id = run_id
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = self.runs_dir / f"{INCOMPLETE_PREFIX}{run_id}"
        self.tmp.mkdir()
        (self.tmp / "owner.pid").write_text(str(os.getpid()))

    def json(self, name: str, data) -> None:
        write_json(self.tmp / name, data)

    def text(self, name: str, text: str) -> None:
        (self.tmp / name).write_text(text)

    def path(self, name: str) -> Path:
        return self.tmp / name

    def publish(self) -> Path:
        missing = [f for f in REQUIRED_FILES if not (self.tmp / f).is_file()]
        if missing:
            raise RuntimeError(f"run {self.run_id} is missing {missing}")
        (self.tmp / "owner.pid").unlink()
        final = self.runs_dir / self.run_id
        os.rename(self.tmp, final)
        return final

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class RunRecord:
    path: Path
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def model_kind(self) -> str:
        return self.config.get("train", {}).get("model", "?")

    @property
    def model_name(self) -> str:
        """What the run calls its model (recorded when it was trained, after its backbone); runs saved
        before names were recorded are named from their settings."""
        label = plain_label(self.config.get("model_label"))
        if label:
            return label
        train = self.config.get("train") if isinstance(self.config.get("train"), dict) else {}
        try:
            kind = ModelKind(train.get("model"))
        except ValueError:
            return str(self.model_kind)[:100]
        handle = train.get("handle")
        return model_label(kind, handle if isinstance(handle, str) else None)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.get("class_names", []))

    @property
    def image_size(self) -> int:
        return int(self.config.get("data", {}).get("image_size", 224))

    @property
    def source(self) -> str:
        """The dataset the run was trained on ("tfds:NAME" / "folder:PATH"), "" if its config lacks one."""
        data = self.config.get("data", {})
        value = data.get("source") if isinstance(data, dict) else None
        return value if isinstance(value, str) else ""

    @property
    def model_path(self) -> Path:
        return self.path / "model.h5"

    @property
    def layers(self) -> list[dict] | None:
        """The layer table (layers.json), checked; None when the run has none or a damaged one."""
        return load_layers(self.path)

    @property
    def summary(self) -> str:
        """summary.txt (Keras's text summary), at most MAX_SUMMARY_CHARS of it: a copied run's could be huge."""
        try:
            with open(self.path / "summary.txt", encoding="utf-8", errors="replace") as fh:
                return fh.read(MAX_SUMMARY_CHARS)
        except OSError:
            return ""

    @property
    def finished_at(self) -> float:
        value = self.metrics.get("finished_at")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

    @property
    def val_accuracy(self) -> float | None:
        """The last epoch's validation accuracy (the saved weights'), None where the run has no finite one."""
        acc = self.metrics.get("final_val_accuracy")
        usable = isinstance(acc, (int, float)) and not isinstance(acc, bool) and math.isfinite(acc)
        return float(acc) if usable else None

    @property
    def label(self) -> str:
        acc = self.metrics.get("final_val_accuracy")
        acc_text = f", val acc {acc:.1%}" if isinstance(acc, (int, float)) else ""
        return f"{self.run_id} ({len(self.history)} epochs{acc_text})"


def matches_dataset(record: RunRecord, source: str, class_names: list[str] | None = None) -> bool:
    """Whether a run was trained on this dataset: the same source, or (when known) the same classes."""
    return record.source == source or (bool(class_names) and record.class_names == list(class_names))


def preferred_run_index(runs: list[RunRecord], source: str, class_names: list[str] | None = None) -> int:
    """The run to offer first for predicting on a dataset: one trained on it, then a transfer run, then the
    best final validation accuracy (the saved weights are the last epoch's)."""
    def score(record: RunRecord):
        acc = record.val_accuracy
        return matches_dataset(record, source, class_names), record.model_kind == "mobilenet_v2", -1 if acc is None else acc

    return max(range(len(runs)), key=lambda i: score(runs[i])) if runs else 0


def _model_file_whole(path: Path) -> bool:
    """Whether model.h5 is an HDF5 file that opens: an empty or truncated copy fails HDF5's own end-of-file check."""
    import h5py

    try:
        with h5py.File(path, "r"):
            return True
    except Exception:  # h5py raises OSError, and others for corrupt structures
        return False


def open_run(path: str | Path) -> RunRecord:
    """Reopen a finished run directory, or raise LabError saying what is missing or malformed: its JSON must
    match core.runs.schema and its model.h5 must open."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise LabError(f"Run folder '{path}' does not exist.")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise LabError(f"'{path}' is not a complete run folder (missing {', '.join(missing)}).")
    try:
        config, history, metrics = load_run_json(path)
    except RunSchemaError as exc:
        raise LabError(f"'{path}' is damaged: {exc}") from None
    if not _model_file_whole(path / "model.h5"):
        raise LabError(f"'{path}' is damaged: its model.h5 is empty, truncated or not an HDF5 file.")
    return RunRecord(path, config, history, metrics)


@dataclass
class RunListing:
    runs: list[RunRecord]
    incomplete: list[Path]  # unfinished or damaged folders, shown but never opened


def list_runs(runs_dir: str | Path) -> RunListing:
    """Every complete run, newest first, plus folders that are not (killed runs, damaged copies)."""
    runs_dir = Path(runs_dir)
    runs, incomplete = [], []
    if not runs_dir.is_dir():
        return RunListing([], [])
    for child in sorted(runs_dir.iterdir(), reverse=True):
        if not child.is_dir():
            continue
        if child.name.startswith(INCOMPLETE_PREFIX):
            incomplete.append(child)
            continue
        if child.name.startswith("."):
            continue
        try:
            runs.append(open_run(child))
        except LabError:
            incomplete.append(child)
    runs.sort(key=lambda record: record.finished_at, reverse=True)
    return RunListing(runs, incomplete)


def clean_incomplete(runs_dir: str | Path) -> list[Path]:
    """Remove unfinished run folders whose writer is dead (or that are stale); returns what was removed."""
    removed = []
    runs_dir = Path(runs_dir)
    # Only hidden unfinished folders are candidates: a damaged published run is the user's to inspect,
    # never deleted here. Globbing them (rather than listing every run) keeps this cheap enough to run
    # whenever a page lists runs.
    try:
        candidates = sorted(p for p in runs_dir.glob(f"{INCOMPLETE_PREFIX}*") if p.is_dir())
    except OSError:
        return removed
    for path in candidates:
        try:
            pid = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            pid = None
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue  # removed meanwhile by another session's clean-up
        dead = not pid_alive(pid) if pid is not None else age > ORPHAN_SECONDS
        if dead or age > STALE_SECONDS:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def file_size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6 if path.is_file() else float("nan")
