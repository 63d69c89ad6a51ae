"""The workshop room: who trained what on this server, for everyone in it to compare (docs/pages.md).

Its ledger lives in `<runs folder>/.room/` (listings skip hidden folders) and outlives the job board:

    entries.json  {"entries": [{"owner": KEY, "run": RUN_ID, "at": SECONDS}, ...], "cleared_at": SECONDS}
    names.json    {KEY: {"name": TEXT, "at": SECONDS}, ...}

KEY is owner_key(token): the token restores a session and stops its trainings, so it is never stored or
shown. Clearing writes a moment before which entries are hidden; no run folder is touched. Only the
dashboard's trainings are entries, one for each session that asked for the same training.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.runs.folders import RunRecord
from core.runs.schema import RunSchemaError, check_config, check_metrics, load_json
from core.settings.config import ModelKind
from core.settings.files import read_json, update_json
from core.settings.text import dataset_name, is_number

logger = logging.getLogger(__name__)

ROOM_DIR = ".room"
ENTRIES, NAMES = "entries.json", "names.json"
MAX_ENTRIES = 500  # a workshop of 30 with a dozen runs each, and room to spare
MAX_PER_OWNER = 50  # one busy participant cannot push everyone else's work out of the room
MAX_NAMES = 500
MAX_NAME_CHARS = 30  # a first name, a team name: what fits a table cell on a phone
KEY_CHARS = 16  # of the token's sha256: 64 bits tell 500 sessions apart, and say nothing of the token
DASHBOARD = "dashboard"
_MAX_RUN_ID = 200
# Unicode's "other" categories: controls, format characters (bidi overrides, zero-width joiners),
# surrogates, private use and unassigned code points. None belongs in a name shown to a room.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def owner_key(token: str) -> str:
    """The room's name for a session: a hash of its token, never the token."""
    return hashlib.sha256(str(token).encode("utf-8", "replace")).hexdigest()[:KEY_CHARS]


def clean_name(text) -> str:
    """A display name as the room shows it: no control or format characters, spaces collapsed, at most
    MAX_NAME_CHARS characters. It is still a stranger's text: pages show it escaped or as a table cell."""
    words = ("".join(c for c in word if unicodedata.category(c) not in _HIDDEN_CATEGORIES)
             for word in str(text or "")[:10 * MAX_NAME_CHARS].split())  # tabs and line breaks: spaces
    return " ".join(w for w in words if w)[:MAX_NAME_CHARS].strip()


def default_name(key: str) -> str:
    """What a participant who chose no name is called: the same each time, telling two apart."""
    return f"Participant {key[:4]}"


def room_dir(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / ROOM_DIR


def _update(runs_dir: str | Path, file: str, change) -> None:
    path = room_dir(runs_dir) / file
    path.parent.mkdir(parents=True, exist_ok=True)
    update_json(path, change, indent=None)


def _valid_run_id(run_id) -> bool:
    return (isinstance(run_id, str) and 0 < len(run_id) <= _MAX_RUN_ID and not run_id.startswith(".")
            and "/" not in run_id and "\\" not in run_id)


def _entries_of(ledger: dict) -> list[dict]:
    """The well-formed entries of a ledger read from disk (a hand-edited one may hold anything)."""
    entries = ledger.get("entries")
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("owner"), str)
            and len(e["owner"]) == KEY_CHARS and _valid_run_id(e.get("run")) and is_number(e.get("at"))]


def _cleared_at(ledger: dict) -> float:
    value = ledger.get("cleared_at")
    return float(value) if is_number(value) else 0.0


def _bounded(entries: list[dict]) -> list[dict]:
    """At most MAX_PER_OWNER entries a participant and MAX_ENTRIES in all, the newest kept, oldest first."""
    entries = sorted(entries, key=lambda e: e["at"])
    per_owner: dict[str, int] = {}
    kept = []
    for entry in reversed(entries):
        count = per_owner.get(entry["owner"], 0)
        if count < MAX_PER_OWNER and len(kept) < MAX_ENTRIES:
            kept.append(entry)
            per_owner[entry["owner"]] = count + 1
    return kept[::-1]


def record_runs(runs_dir: str | Path, token: str, run_dirs: Iterable, at: float | None = None) -> int:
    """Put the runs of one session's training in the room; how many were new.

    Idempotent: a run already in the room keeps its entry (the worker and the Room page may both
    record one). Only run folders directly inside runs_dir count.
    """
    runs_dir = Path(runs_dir)
    ids = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        if path.parent.resolve() == runs_dir.resolve() and _valid_run_id(path.name):
            ids.append(path.name)
    if not ids or not token:
        return 0
    key, now = owner_key(token), time.time() if at is None else float(at)
    path = room_dir(runs_dir) / ENTRIES
    if {(key, r) for r in ids} <= {(e["owner"], e["run"]) for e in _entries_of(read_json(path) or {})}:
        return 0  # the common case when pages record running jobs: nothing to write, no lock taken
    added = 0

    def change(ledger: dict) -> dict:
        nonlocal added
        entries = _entries_of(ledger)
        known = {(e["owner"], e["run"]) for e in entries}
        for run_id in dict.fromkeys(ids):
            if (key, run_id) not in known:
                entries.append({"owner": key, "run": run_id, "at": now})
                added += 1
        return {"entries": _bounded(entries), "cleared_at": _cleared_at(ledger)}

    _update(runs_dir, ENTRIES, change)
    return added


def record_job(runs_dir: str | Path, spec: dict | None, run_dirs: Iterable, joiners: Iterable[str] = ()) -> None:
    """Record a finished job's runs in the room, for its owner and for every session that joined it (asked
    for the same training), if the dashboard started it; never raises (a job's result matters more than its
    place in the room)."""
    try:
        if isinstance(spec, dict) and spec.get("origin", DASHBOARD) == DASHBOARD:
            run_dirs = list(run_dirs)
            for owner in (spec.get("owner"), *joiners):
                if isinstance(owner, str) and owner:
                    record_runs(runs_dir, owner, run_dirs)
    except Exception:
        logger.exception("the room could not record the runs of a job in %s", runs_dir)


def record_running(runs_dir: str | Path, views: Iterable) -> None:
    """Record the runs jobs have saved so far (a board's JobViews: origin, owner, joiners, snapshot.run_dirs),
    so that "Run both"'s transfer result is in the room while its baseline still trains."""
    for view in views:
        run_dirs = getattr(getattr(view, "snapshot", None), "run_dirs", None)
        if run_dirs and getattr(view, "origin", None) == DASHBOARD:
            try:
                for owner in (view.owner, *getattr(view, "joiners", ())):
                    record_runs(runs_dir, owner, run_dirs)
            except OSError as exc:  # a full disk: recorded when the job ends, or on a later look
                logger.warning("the room could not record job %s yet: %s", getattr(view, "job_id", "?"), exc)


def set_name(runs_dir: str | Path, token: str, name) -> str:
    """Set this session's display name (cleaned, see clean_name); the name as stored. "" removes it."""
    key, shown = owner_key(token), clean_name(name)

    def change(names: dict) -> dict:
        names = {k: v for k, v in names.items() if isinstance(v, dict) and is_number(v.get("at"))}
        names.pop(key, None)
        if shown:
            names[key] = {"name": shown, "at": time.time()}
        newest = sorted(names.items(), key=lambda item: item[1]["at"])[-MAX_NAMES:]
        return dict(newest)

    _update(runs_dir, NAMES, change)
    return shown


def names(runs_dir: str | Path) -> dict[str, str]:
    """Every display name in the room, by owner key, cleaned again (the file may have been edited)."""
    stored = read_json(room_dir(runs_dir) / NAMES) or {}
    cleaned = {key: clean_name(value.get("name")) if isinstance(value, dict) else "" for key, value in stored.items()}
    return {key: name for key, name in cleaned.items() if name}


def name_of(runs_dir: str | Path, token: str) -> str:
    """This session's display name; "" when it chose none."""
    return names(runs_dir).get(owner_key(token), "")


def clear(runs_dir: str | Path, at: float | None = None) -> None:
    """Hide every entry recorded until now (or until at). Run folders and names stay as they are."""
    moment = time.time() if at is None else float(at)
    _update(runs_dir, ENTRIES, lambda ledger: {"entries": _entries_of(ledger),
                                               "cleared_at": max(moment, _cleared_at(ledger))})


# Who may clear the room: anyone at a local Lab (a workshop machine the instructor runs); on any other
# preset (a public host) only whoever knows the host's room password, and nobody when none is set.
OPEN, PASSWORD, CLOSED = "open", "password", "closed"


def clearing_rule(preset_name: str, password: str | None) -> str:
    """OPEN, PASSWORD or CLOSED: how the room may be cleared on this preset with this configured password."""
    if preset_name == "local":
        return OPEN
    return PASSWORD if password else CLOSED


def password_matches(configured: str | None, given) -> bool:
    """Whether given is the configured room password, compared in constant time; never without one."""
    if not configured or not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(configured.encode("utf-8"), given.encode("utf-8"))


@dataclass(frozen=True)
class Entry:
    owner: str  # owner_key of the session that trained it
    run_id: str
    at: float


def entries(runs_dir: str | Path) -> list[Entry]:
    """The room's visible entries (recorded after the last clearing), oldest first."""
    ledger = read_json(room_dir(runs_dir) / ENTRIES) or {}
    cleared = _cleared_at(ledger)
    return [Entry(e["owner"], e["run"], float(e["at"])) for e in _entries_of(ledger) if e["at"] > cleared]


# -- the table the Room page shows ----------------------------------------------------------------------

@dataclass(frozen=True)
class RoomRun:
    """One saved run, as the room describes it: names and figures only."""
    run_id: str
    kind: str  # "baseline" or "mobilenet_v2" (ModelKind values); another text for a foreign run
    model: str  # e.g. "Baseline CNN", "MobileNetV2 transfer"
    val_accuracy: float | None
    seconds: float | None
    finished_at: float


@dataclass(frozen=True)
class RoomRow:
    """What one participant trained on one dataset: the newest baseline and transfer runs side by side."""
    owner: str
    name: str
    dataset: str  # the dataset's short name (core.settings.text.dataset_name)
    classes: tuple[str, ...]
    images_per_class: tuple[int, int] | None  # fewest and most images of a class, all splits together
    baseline: RoomRun | None
    transfer: RoomRun | None
    at: float  # when its newest run entered the room

    @property
    def runs(self) -> list[RoomRun]:
        return [r for r in (self.transfer, self.baseline) if r is not None]


_read_lock = threading.Lock()
_read_cache: dict[tuple, tuple | None] = {}
_READ_CACHE_KEPT = 2 * MAX_ENTRIES


def _run_facts(folder: Path) -> tuple | None:
    """(config, metrics) of a saved run, checked against the run schema; None for a missing or damaged one.

    Cached by the files' sizes and modification times: every open Room page asks every few seconds.
    """
    try:
        config_stat, metrics_stat = (folder / "config.json").stat(), (folder / "metrics.json").stat()
        if not (folder / "model.h5").is_file():
            return None
    except OSError:
        return None
    key = (str(folder), config_stat.st_mtime_ns, config_stat.st_size, metrics_stat.st_mtime_ns,
           metrics_stat.st_size)
    with _read_lock:
        if key in _read_cache:
            return _read_cache[key]
    try:
        config, metrics = load_json(folder / "config.json"), load_json(folder / "metrics.json")
        check_config(config)
        check_metrics(metrics)
        facts = (config, metrics)
    except RunSchemaError as exc:
        logger.warning("the room leaves out %s: %s", folder.name, exc)
        facts = None
    with _read_lock:
        if len(_read_cache) >= _READ_CACHE_KEPT:
            _read_cache.pop(next(iter(_read_cache)))
        _read_cache[key] = facts
    return facts


def _images_per_class(config: dict) -> tuple[int, int] | None:
    counts = (config.get("dataset") or {}).get("counts")
    if not isinstance(counts, dict):
        return None
    per_class: dict[str, int] = {}
    for split in counts.values():
        for name, n in split.items():
            per_class[name] = per_class.get(name, 0) + n
    return (min(per_class.values()), max(per_class.values())) if per_class else None


def _room_run(record: RunRecord) -> RoomRun:
    # Its epochs and, for a transfer run on cached features, computing those features once.
    parts = [record.metrics.get(k) for k in ("train_seconds", "feature_seconds")]
    seconds = sum(p for p in parts if is_number(p) and p >= 0) if is_number(parts[0]) else None
    return RoomRun(run_id=record.run_id, kind=str(record.model_kind), model=record.model_name,
                   val_accuracy=record.val_accuracy, seconds=seconds, finished_at=record.finished_at)


def rows(runs_dir: str | Path) -> list[RoomRow]:
    """The room as a table: one row per participant and dataset, newest first.

    A row pairs the participant's newest baseline and newest transfer run on the same data (the same
    source and classes); runs whose folders are gone or damaged are left out.
    """
    runs_dir = Path(runs_dir)
    shown_names = names(runs_dir)
    groups: dict[tuple, dict] = {}
    for entry in entries(runs_dir):
        facts = _run_facts(runs_dir / entry.run_id)
        if facts is None:
            continue
        record = RunRecord(Path(entry.run_id), facts[0], [], facts[1])
        source, classes = record.source, tuple(record.class_names)
        group = groups.setdefault((entry.owner, source, classes), {
            "owner": entry.owner, "dataset": dataset_name(source) if source else "?", "classes": classes,
            "images": _images_per_class(record.config), "baseline": None, "transfer": None, "at": entry.at})
        run = _room_run(record)
        slot = "baseline" if run.kind == ModelKind.BASELINE.value else "transfer"
        if group[slot] is None or run.finished_at >= group[slot].finished_at:  # the newest of its kind
            group[slot] = run
            group["images"] = _images_per_class(record.config) or group["images"]
        group["at"] = max(group["at"], entry.at)
    out = [RoomRow(owner=g["owner"], name=shown_names.get(g["owner"]) or default_name(g["owner"]),
                   dataset=g["dataset"], classes=g["classes"], images_per_class=g["images"],
                   baseline=g["baseline"], transfer=g["transfer"], at=g["at"]) for g in groups.values()]
    out.sort(key=lambda r: r.at, reverse=True)
    return out
