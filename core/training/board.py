"""The job board: every training of this installation, queued, running or finished, for every page to see.

A job is a folder under `<runs folder>/.jobs/<job-id>/`:

    spec.json    what to train (the experiments' configs and estimates), who asked (an owner token and
                 the origin: dashboard or cli), when, and each experiment's fingerprint
    launch.json  the pid of the worker process training it, once one was started
    status.json  the latest Snapshot, published by the process that trains (atomic rename, a few a second)
    stop         present once someone asked the job to stop
    joiners.json the owners of identical submissions that joined this job, for the room's ledger
    exit.json    how the worker ended, written by the process that started it

Jobs from the dashboard train in a worker process (`python -m core.training.worker JOB_DIR`), never in the
server that shows them: TensorFlow's Python threads then never compete with the server for its
interpreter lock, a reload or a closed tab leaves the training alone, and a crash or an out-of-memory kill
ends that job only. At most the preset's `max_concurrent_jobs` train at once; later jobs wait in the order
they came, and one session (an owner) may have at most `max_jobs_per_session` of them queued or running. An
experiment whose fingerprint (its data's files, its settings, its seed) matches a run that finished here is
not trained again, and a job identical to one queued or running is joined, not repeated (the joiner holds no
job of its own by that).

Every file here is read within bounds (core.settings.files.read_json): a damaged, huge or deeply nested one
reads as missing, so a page that shows the board never fails on it. A full or read-only runs folder never
fails a page either: reading goes on, pumping waits for space, and a submission is refused with one line.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.runs.folders import open_run
from core.runs.room import record_job
from core.settings.config import data_from_dict, to_dict, train_from_dict
from core.settings.errors import LabError
from core.settings.files import free_space, is_disk_full, is_read_only, locked, read_json, write_json
from core.settings.processes import launch_module, pid_alive
from core.settings.text import is_number, megabytes
from core.training.jobs import FAILED, PREPARING, QUEUED, STOPPED, Experiment, Job, Snapshot

logger = logging.getLogger(__name__)

JOBS_DIR = ".jobs"
SPEC, STATUS, LAUNCH, STOP, EXIT, LOG = "spec.json", "status.json", "launch.json", "stop", "exit.json", "worker.log"
TRAIN_TASK = "train"
ENDED = "ended"  # written beside a final status, so listing active jobs need not read finished ones
KEPT_FINISHED = 200  # finished jobs kept on the board for reuse and links; older ones are removed
# A launch that never recorded its worker's pid this long after it began counts as lost.
LAUNCH_GRACE_SECONDS = 60
WORKER_START = "worker-start.json"  # how long the latest worker took to start, for estimates
# Bounds of what the board reads. A status holds the job's histories, about 270 bytes an epoch (4 MB: some
# 15,000 epochs); a spec a few kilobytes per experiment; the other files (launch, exit, worker start) a line.
STATUS_MAX_BYTES = 4 * 1024 * 1024
SPEC_MAX_BYTES = 1024 * 1024
SMALL_FILE_MAX_BYTES = 64 * 1024
# The worker's exit code when it could not record its progress or its end because the disk was full
# (sysexits' EX_TEMPFAIL: the job may be trained again once there is space).
EXIT_DISK_FULL = 75
# While the disk is full the watcher of an ended worker tries again this often to record how it ended.
EXIT_RETRY_SECONDS = 5.0
LOW_SPACE_BYTES = 16 * 1000**2  # less free than this, and a worker that ended unheard probably ran out of space
WARN_EVERY_SECONDS = 600  # a board that cannot be changed is logged this often, not on every page's refresh
DEFAULT_WORKER_START_SECONDS = 4.0  # Python and TensorFlow starting on a quiet 2-core machine
# How often pages may pump one board, however many of them watch it: a look at dead workers and free slots
# is a few file reads under the board's lock, and every watching page asks every 2 s.
PUMP_EVERY_SECONDS = 2.0
_last_pumped: dict[Path, float] = {}
_last_pumped_lock = threading.Lock()
# How the workers started by this process ended, kept until their exit file is written: while the disk is
# full that file cannot be, and the board still needs to say why the job ended.
_ended_here: dict[Path, int] = {}
_warned: dict[tuple, float] = {}
_warned_lock = threading.Lock()
# The warm worker of this process (core.training.worker --standby): TensorFlow imported, it takes the next
# job at once instead of making it wait for a new process to import it (seconds, most of a small job).
# There is at most one, made for the LAB_* settings it inherited, and it waits only while a training slot is
# free: it never adds a TensorFlow process to those the preset lets train at once.
STANDBY_LOG = "standby.log"
_standby: subprocess.Popen | None = None
_standby_env: tuple = ()
_standby_lock = threading.Lock()


def jobs_root(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / JOBS_DIR


def experiment_fingerprint(source, data, train) -> str:
    """What makes two experiments the same: the data's files (or TFDS split), every setting, the seed."""
    from core.models.hub import is_local, normalise_handle
    from core.training.features import _saved_model_fingerprint, source_parts

    parts = {"data": to_dict(data), "train": to_dict(train),
             "splits": {split: source_parts(source, split) for split in ("train", "validation")}}
    if any(v is None for v in parts["splits"].values()):
        parts["unkeyed"] = secrets.token_hex(8)  # a source that cannot be keyed is never taken for another
    handle = normalise_handle(train.handle)
    if is_local(handle) and Path(handle).is_dir():
        parts["handle_files"] = _saved_model_fingerprint(Path(handle))
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def worker_start_seconds(runs_dir: str | Path) -> float:
    """Seconds a worker process needs before it trains (interpreter, TensorFlow), as last measured here."""
    recorded = read_small(jobs_root(runs_dir) / WORKER_START)
    value = recorded.get("seconds") if recorded is not None else None
    if is_number(value) and 0 < value < 600:
        return float(value)
    return DEFAULT_WORKER_START_SECONDS


def record_worker_start(runs_dir: str | Path, seconds: float) -> None:
    with contextlib.suppress(OSError):
        write_json(jobs_root(runs_dir) / WORKER_START, {"seconds": round(seconds, 3), "at": time.time()})


# A job's spec is written once, before its folder appears: read and checked once per process, while its
# file is the same (pages polling a queue read every job's spec every few seconds). Never mutate one.
_specs: dict[Path, tuple[tuple[int, int], dict]] = {}
_specs_lock = threading.Lock()
MAX_SPECS_KEPT = 512


def _version(path: Path) -> tuple | None:
    """(modification time, size) of a file, None when it is not there: whether a kept read still holds."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def read_spec(job_dir: Path) -> dict | None:
    path = job_dir / SPEC
    version = _version(path)
    if version is None:
        return None
    with _specs_lock:
        kept = _specs.get(path)
    if kept is not None and kept[0] == version:
        return kept[1]
    spec = read_json(path, dict, max_bytes=SPEC_MAX_BYTES)
    if spec is not None:
        with _specs_lock:
            if len(_specs) >= MAX_SPECS_KEPT:
                _specs.clear()
            _specs[path] = (version, spec)
    return spec


_derived: dict[tuple[Path, str], tuple[dict, object]] = {}


def _from_spec(job_dir: Path, spec: dict, what: str, make: Callable[[], object]):
    """What a job's spec gives (its title, its estimates, its snapshot before it starts), made once per spec
    read_spec keeps: a room's queue is read every second, and each of these builds the job's configs."""
    kept = _derived.get((job_dir, what))
    if kept is not None and kept[0] is spec:
        return kept[1]
    value = make()
    if len(_derived) >= 4 * MAX_SPECS_KEPT:
        _derived.clear()
    _derived[(job_dir, what)] = (spec, value)
    return value


JOINERS = "joiners.json"
MAX_JOINERS = 100  # a workshop room pressing the same Quick demo, and room to spare


def read_joiners(job_dir: Path) -> tuple[str, ...]:
    """The owners who joined this job (Board.submit), oldest first."""
    owners = (read_json(job_dir / JOINERS, dict, max_bytes=SMALL_FILE_MAX_BYTES * MAX_JOINERS) or {}).get("owners")
    return tuple(o for o in owners if isinstance(o, str) and o)[:MAX_JOINERS] if isinstance(owners, list) else ()


def _add_joiner(job_dir: Path, owner: str) -> None:
    """Under the board's lock (the only writer)."""
    owners = read_joiners(job_dir)
    if owner not in owners and len(owners) < MAX_JOINERS:
        write_json(job_dir / JOINERS, {"owners": [*owners, owner]})


def read_small(path: Path) -> dict | None:
    """A launch, exit or worker-start record: one JSON object of a line."""
    return read_json(path, dict, max_bytes=SMALL_FILE_MAX_BYTES)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _warn(key: tuple, message: str, *args) -> None:
    """Log a warning about a condition that pages would otherwise repeat every few seconds, now and then."""
    now = time.monotonic()
    with _warned_lock:
        if now - _warned.get(key, float("-inf")) < WARN_EVERY_SECONDS:
            return
        _warned[key] = now
    logger.warning(message, *args)


def space_note(runs_dir: Path) -> str:
    """'the disk is full (12 MB free in the runs folder)'."""
    free = free_space(runs_dir)
    return "the disk is full" + (f" ({megabytes(free)} free in the runs folder)" if free is not None else "")


def disk_problem(exc: OSError, runs_dir: Path) -> str:
    """What a failed write of the board says about its runs folder, to end a sentence with."""
    if is_disk_full(exc):
        return f"{space_note(runs_dir)}; free space there, then try again"
    if is_read_only(exc):
        return (f"the runs folder is read-only ({exc.strerror or exc.__class__.__name__}); make it writable "
                "or set LAB_RUNS_DIR to another folder")
    return f"{exc.strerror or exc.__class__.__name__} in the runs folder"


def exit_reason(returncode: int) -> str:
    """One line on how a worker process ended without reporting a result."""
    if returncode == EXIT_DISK_FULL:
        return ("The training process stopped because the disk was full: it could not record its progress. "
                "Free space in the runs folder, then train again.")
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the system usually does this when memory runs out)" if name == "SIGKILL" else ""
        return f"The training process was killed by {name}{hint}; nothing of this job was saved as a run."
    return f"The training process ended with exit code {returncode} before it reported a result."


@dataclass(frozen=True)
class JobView:
    """One job as a page shows it."""
    job_id: str
    path: Path
    created: float
    origin: str  # "dashboard" or "cli"
    owner: str
    title: str  # e.g. "Baseline CNN, then MobileNetV2 transfer"
    source: str  # the data it trains on, e.g. "folder:/data/faces"
    fingerprints: tuple[str, ...]
    snapshot: Snapshot
    queue_position: int | None = None  # 1 = next to start; None when running or finished
    wait_seconds: float | None = None  # until a queued job starts, when every job ahead has an estimate
    task: str = TRAIN_TASK  # what the job does: trains its experiments, or a data efficiency measurement
    joiners: tuple[str, ...] = ()  # owners who joined it (read once it has saved a run: only the room needs them)

    @property
    def queued(self) -> bool:
        return self.snapshot.phase == QUEUED

    @property
    def finished(self) -> bool:
        return self.snapshot.finished

    @property
    def active(self) -> bool:
        return not self.snapshot.finished


@dataclass(frozen=True)
class Submission:
    job_id: str | None  # the job that will train what was asked (None: everything was trained already)
    attached: bool  # an identical job was queued or running: this submission joined it
    reused: dict[int, Path] = field(default_factory=dict)  # experiment index -> finished run with its fingerprint


def _experiments_from_spec(spec: dict) -> list[Experiment]:
    return [Experiment(data_from_dict(e["data"]), train_from_dict(e["train"]), e.get("estimated_seconds"),
                       e.get("fine_tune_seconds")) for e in spec["experiments"]]


def _running(views: list[JobView]) -> int:
    """Jobs holding a training slot: started (or being started) and not finished."""
    return sum(1 for v in views if v.active and not v.queued)


def _startable(v: JobView) -> bool:
    """A queued job nobody has launched or cancelled yet."""
    return v.queued and not _exists(v.path / LAUNCH) and not _exists(v.path / STOP)


def _task(spec: dict) -> dict:
    task = spec.get("task")
    return task if isinstance(task, dict) and isinstance(task.get("kind"), str) else {"kind": TRAIN_TASK}


def _title(spec: dict) -> str:
    """The job's models by their honest names, e.g. "Baseline CNN, then MobileNetV2 transfer"."""
    from core.training.experiment import run_model_label

    task = _task(spec)
    if task["kind"] != TRAIN_TASK:
        counts = task.get("counts")
        return "Data efficiency" + (f" ({', '.join(map(str, counts))} images per class)"
                                    if isinstance(counts, list) and all(is_number(c) for c in counts) else "")

    names = []
    for e in spec.get("experiments", []):
        try:
            names.append(run_model_label(train_from_dict(e["train"])))
        except (KeyError, ValueError, TypeError, LabError):
            names.append("an unknown model")
    return ", then ".join(names)


# The types a published status must have for pages to draw it (Snapshot.from_dict takes what it is given).
_SNAPSHOT_NUMBERS = ("index", "total", "epoch", "epochs", "step", "steps", "elapsed_seconds", "fraction")


def _snapshot(status: dict) -> Snapshot | None:
    """The snapshot a status file holds; None when it does not hold a well-formed one."""
    try:
        snapshot = Snapshot.from_dict(status)
    except (KeyError, TypeError, ValueError):
        return None
    well_formed = (isinstance(snapshot.phase, str) and isinstance(snapshot.message, str)
                   and all(is_number(getattr(snapshot, name)) for name in _SNAPSHOT_NUMBERS)
                   and (snapshot.eta_seconds is None or is_number(snapshot.eta_seconds))
                   and (snapshot.error is None or isinstance(snapshot.error, str))
                   and all(isinstance(row, dict) for _, rows in snapshot.histories for row in rows))
    return snapshot if well_formed else None


def _estimates(job_dir: Path) -> list[float | None] | None:
    """Each experiment's estimated seconds from the job's spec; None when the spec no longer reads."""
    spec = read_spec(job_dir)
    try:
        return _from_spec(job_dir, spec, "estimates",
                          lambda: [e.estimated_seconds for e in _experiments_from_spec(spec)])
    except (KeyError, TypeError, ValueError, AttributeError, LabError):
        return None


# What the boards of this process last read, by (jobs folder, active only): pages of one server share it.
_shared_reads: dict[tuple[Path, bool], tuple[float, list]] = {}
_changes: dict[Path, int] = {}  # changes this process made to each board: a read begun before one is not kept
_shared_reads_lock = threading.Lock()
# One page reads the board while the others due at the same moment wait for its read: each reading it too
# multiplied the work by the room (30 pages each reading every job's files, holding the interpreter lock).
_reading: dict[tuple[Path, bool], threading.Lock] = {}
# An ended job's view is final but for sessions joining it later (its joiners file): kept by folder, so that
# a read of the board opens the files of the jobs still running only.
_final_views: dict[Path, tuple[tuple | None, JobView]] = {}
_final_views_lock = threading.Lock()
MAX_FINAL_VIEWS = 2 * KEPT_FINISHED


def _forget_reads(root: Path) -> None:
    """After this process changed the board: the next read of it goes to its files."""
    with _shared_reads_lock:
        _changes[root] = _changes.get(root, 0) + 1
        for key in [k for k in _shared_reads if k[0] == root]:
            del _shared_reads[key]


class Board:
    """The jobs of one runs folder. Cheap to create: pages make one per script run.

    shared_reads_seconds > 0 lets the boards of one process share what one of them read for that long (a
    server's pages): every polling page reading every job's files kept a room's server busy with nothing
    else. Whatever changes the board (submit, stop, pump, a worker's claim) reads the files themselves.
    """

    def __init__(self, runs_dir: str | Path, max_concurrent: int | None = None,
                 launcher: Callable[[Path], subprocess.Popen] | None = None, max_per_session: int | None = None,
                 warm_worker: bool = False, shared_reads_seconds: float = 0.0):
        self.shared_reads_seconds = shared_reads_seconds
        self.runs_dir = Path(runs_dir)
        self.root = jobs_root(runs_dir)
        if max_concurrent is None or max_per_session is None:
            from core.settings.presets import active_preset

            preset = active_preset()
            max_concurrent = preset.max_concurrent_jobs if max_concurrent is None else max_concurrent
            max_per_session = preset.max_jobs_per_session if max_per_session is None else max_per_session
        self.max_concurrent = max(1, int(max_concurrent))
        self.max_per_session = max(1, int(max_per_session))
        self._launcher = launcher or launch_worker
        self.warm_worker = warm_worker  # keep a warm worker for the next job while a slot is free

    # -- reading ---------------------------------------------------------------------------------------

    def _job_dirs(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return []

    def _view(self, path: Path, ended: bool | None = None) -> JobView | None:
        """The job in path as pages show it; None for a folder whose files do not make a job. ended: whether
        the job's end is marked, when the caller has just looked."""
        if ended is None:
            ended = _exists(path / ENDED)
        if not ended:
            return self._read_view(path)
        joiners = _version(path / JOINERS)
        with _final_views_lock:
            kept = _final_views.get(path)
        if kept is not None and kept[0] == joiners:
            return kept[1]
        view = self._read_view(path)
        if view is not None and view.finished:
            with _final_views_lock:
                if len(_final_views) >= MAX_FINAL_VIEWS:
                    _final_views.clear()
                _final_views[path] = (joiners, view)
        return view

    def _read_view(self, path: Path) -> JobView | None:
        spec = read_spec(path)
        if spec is None or not isinstance(spec.get("experiments"), list) or not spec["experiments"]:
            return None
        try:
            return self._view_of(path, spec)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, LabError) as exc:
            # Written by hand or by another version: shown nowhere, said once, never a page's error.
            _warn(("view", str(path)), "job %s is not shown: its files do not make a job (%s: %s)", path.name,
                  exc.__class__.__name__, exc)
            return None

    def _view_of(self, path: Path, spec: dict) -> JobView:
        status = read_json(path / STATUS, dict, max_bytes=STATUS_MAX_BYTES)
        snapshot = _snapshot(status) if status is not None else None
        if snapshot is None:
            snapshot = _from_spec(path, spec, "snapshot",
                                  lambda: Job(_experiments_from_spec(spec), self.runs_dir).snapshot())
            if _exists(path / LAUNCH):
                snapshot = _with(snapshot, phase=PREPARING, message="Starting the training process ...")
        elif snapshot.eta_seconds is not None and not snapshot.finished:
            # The status is as old as its last write; the time since then has passed for the ETA too.
            written = status.get("written_at")
            age = max(0.0, time.time() - written) if is_number(written) else 0.0
            snapshot = _with(snapshot, eta_seconds=max(0.0, snapshot.eta_seconds - age),
                             elapsed_seconds=snapshot.elapsed_seconds + age)
        return JobView(job_id=path.name, path=path, created=float(spec.get("created", 0)),
                       origin=str(spec.get("origin", "dashboard")), owner=str(spec.get("owner", "")),
                       title=_from_spec(path, spec, "title", lambda: _title(spec)), source=str(spec["experiments"][0]["data"].get("source", "?")),
                       fingerprints=tuple(str(f) for f in spec.get("fingerprints", ())), snapshot=snapshot,
                       task=_task(spec)["kind"], joiners=read_joiners(path) if snapshot.run_dirs else ())

    def views(self, active_only: bool = False) -> list[JobView]:
        """Every job (or every unfinished one), oldest first, queued ones with their place and wait."""
        if self.shared_reads_seconds <= 0:
            return self._read_views(active_only)
        key = (self.root, active_only)
        with _shared_reads_lock:
            reading = _reading.setdefault(key, threading.Lock())
        with reading:
            now = time.monotonic()
            with _shared_reads_lock:
                seen, changes = _shared_reads.get(key), _changes.get(self.root, 0)
            if seen is not None and now - seen[0] < self.shared_reads_seconds:
                return list(seen[1])
            views = self._read_views(active_only)
            with _shared_reads_lock:
                if _changes.get(self.root, 0) == changes:
                    _shared_reads[key] = (now, views)
        return list(views)

    def _read_views(self, active_only: bool = False) -> list[JobView]:
        dirs = [(d, _exists(d / ENDED)) for d in self._job_dirs()]
        if active_only:
            dirs = [(d, ended) for d, ended in dirs if not ended]
        views = [v for v in (self._view(d, ended) for d, ended in dirs) if v is not None]
        views.sort(key=lambda v: (v.created, v.job_id))
        return self._with_queue(views)

    def active(self) -> list[JobView]:
        return [v for v in self.views(active_only=True) if v.active]

    def view(self, job_id: str) -> JobView | None:
        """One job: an ended one from its own files (or as kept), any other as the board's read of the jobs
        still running places it in the queue."""
        if not isinstance(job_id, str) or not job_id.replace("-", "").isalnum():
            return None
        path = self.root / job_id
        if _exists(path / ENDED):
            return self._view(path, ended=True)
        found = next((v for v in self.views(active_only=True) if v.job_id == job_id), None)
        if found is None and _exists(path):  # newer than the shared read, or it ended since
            found = self._view(path)
        return found

    def _with_queue(self, views: list[JobView]) -> list[JobView]:
        """Place and expected wait of each queued job: running jobs' time left, then the estimates of
        the jobs ahead, spread over the slots as the scheduler will."""
        slots = sorted(v.snapshot.eta_seconds or 0.0 for v in views if v.active and not v.queued)
        unknown = any(v.snapshot.eta_seconds is None for v in views if v.active and not v.queued)
        slots = (slots + [0.0] * self.max_concurrent)[:self.max_concurrent] if len(slots) < self.max_concurrent \
            else slots
        out, position = [], 0
        for v in views:
            if not v.queued:
                out.append(v)
                continue
            position += 1
            slots.sort()
            start = slots[0]
            out.append(JobView(**{**v.__dict__, "queue_position": position,
                                  "wait_seconds": None if unknown else start}))
            estimates = _estimates(v.path)
            if estimates is None or any(e is None for e in estimates):
                unknown = True
            else:
                slots[0] = start + sum(estimates)
        return out

    def finished_run(self, fingerprint: str) -> Path | None:
        """The newest complete run (all its epochs) trained here with this fingerprint, if it still exists."""
        for v in reversed(self._read_views()):
            if not v.finished or fingerprint not in v.fingerprints:
                continue
            index = v.fingerprints.index(fingerprint)
            if index >= len(v.snapshot.run_dirs):
                continue
            try:
                record = open_run(v.snapshot.run_dirs[index])
            except LabError:
                continue
            if not record.metrics.get("stopped_early"):
                return record.path
        return None

    # -- changing --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, forget: bool = True):
        """The board's lock, or a LabError of one line when the runs folder cannot hold it. forget: what the
        pages of this process share of the board is read again afterwards (the caller changes it)."""
        with contextlib.ExitStack() as stack:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                stack.enter_context(locked(self.root / ".lock"))
            except OSError as exc:
                raise LabError(f"The job board cannot be changed: {disk_problem(exc, self.runs_dir)}.") from None
            if forget:
                stack.callback(_forget_reads, self.root)
            yield

    def submit(self, experiments: list[Experiment], fingerprints: list[str], owner: str,
               origin: str = "dashboard", task: dict | None = None) -> Submission:
        """Queue experiments as one job, train nothing twice, and start what the slots allow.

        task, when given, is other work on the experiments' data (its "kind" names it, e.g. a data efficiency
        measurement, core.training.efficiency), kept in the job's spec for the worker.

        Raises LabError when the owner already holds max_per_session jobs, or when the runs folder cannot
        take the job (full, read-only).
        """
        if not experiments or len(experiments) != len(fingerprints):
            raise ValueError("one fingerprint per experiment, and at least one experiment")
        submission = self._submit(experiments, fingerprints, owner, origin, task)
        if submission.reused:  # handed a finished run: in the room under this session's name too
            record_job(self.runs_dir, {"origin": origin, "owner": owner}, submission.reused.values())
        return submission

    def _submit(self, experiments: list[Experiment], fingerprints: list[str], owner: str, origin: str,
                task: dict | None) -> Submission:
        try:
            with self._locked():
                self._reap()
                reused = {i: run for i, fp in enumerate(fingerprints) if (run := self.finished_run(fp)) is not None}
                todo = [i for i in range(len(experiments)) if i not in reused]
                if not todo:
                    return Submission(None, False, reused)
                wanted = tuple(fingerprints[i] for i in todo)
                active = [v for v in self._read_views(active_only=True) if v.active]
                for v in active:
                    if v.fingerprints == wanted:
                        if v.owner != owner:
                            _add_joiner(v.path, owner)
                        return Submission(v.job_id, True, reused)
                self._check_session_limit(active, owner)
                job_id = self._create([experiments[i] for i in todo], list(wanted), owner, origin, task=task)
                self._start_queued()
        except OSError as exc:
            raise LabError(f"The training could not be queued: {disk_problem(exc, self.runs_dir)}.") from None
        return Submission(job_id, False, reused)

    def _check_session_limit(self, active: list[JobView], owner: str) -> None:
        held = sum(1 for v in active if v.owner == owner)
        if held < self.max_per_session:
            return
        if self.max_per_session == 1:
            raise LabError("You already have a training queued or running; wait for it to finish or stop it.")
        raise LabError(f"You already have {held} trainings queued or running, the most one session may have; wait "
                       "for one to finish or stop it.")

    def _create(self, experiments: list[Experiment], fingerprints: list[str], owner: str, origin: str,
                pid: int | None = None, task: dict | None = None) -> str:
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        tmp = self.root / f".new-{job_id}"
        spec = {"job_id": job_id, "created": time.time(), "origin": origin, "owner": owner, "pid": pid,
                "fingerprints": fingerprints,
                "experiments": [{"data": to_dict(e.data), "train": to_dict(e.train),
                                 "estimated_seconds": e.estimated_seconds, "fine_tune_seconds": e.fine_tune_seconds}
                                for e in experiments]}
        if task is not None:
            spec["task"] = task
        try:
            tmp.mkdir(parents=True)
            write_json(tmp / SPEC, spec)
            os.replace(tmp, self.root / job_id)  # a job appears whole or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return job_id

    def finish_and_claim(self, job_dir: Path, final: Snapshot, pid: int) -> Path | None:
        """Publish a worker's final snapshot and, in the same hold of the board's lock, give process pid the
        oldest queued job if the slot this job leaves is still free: the worker goes on with it, and no page
        starts a process for it in between. The claimed job's folder, or None."""
        try:
            with self._locked():
                _publish(job_dir, final)
                views = self._read_views(active_only=True)
                if _running(views) >= self.max_concurrent:
                    return None
                for v in views:
                    if _startable(v):
                        write_json(v.path / LAUNCH, {"pid": pid, "at": time.time()})
                        return v.path
        except LabError:  # the board cannot be locked (a full disk): publish as ever, take nothing
            _publish(job_dir, final)
        return None

    def stop(self, job_id: str) -> None:
        """Ask a running job to stop after its current batch; a queued one leaves the queue at once."""
        view = self.view(job_id)
        if view is None or view.finished:
            return
        try:
            with self._locked():
                view = self._view(view.path) or view  # as it is now, not as a page last read it
                (view.path / STOP).touch()
                if not _exists(view.path / LAUNCH) and view.origin != "cli":
                    _publish(view.path, _with(view.snapshot, phase=STOPPED, eta_seconds=None,
                                              message="Cancelled before it started; nothing was trained."))
                self._start_queued()
        except OSError as exc:
            raise LabError(f"The training could not be stopped: {disk_problem(exc, self.runs_dir)}.") from None

    def pump(self) -> None:
        """Mark jobs whose process died as failed and start queued jobs into free slots.

        A runs folder that cannot be written now (full, read-only) leaves the board as it is, with a line
        in the log now and then: pages pump on every refresh, and must go on showing the board.
        """
        try:
            with self._locked(forget=False):  # a pump mostly changes nothing: the pages' shared read stands
                if self._reap() | self._start_queued():
                    _forget_reads(self.root)
        except (LabError, OSError) as exc:
            _warn(("pump", self.root), "the job board in %s was left as it is: %s", self.root, exc)

    def keep_warm(self, active: list[JobView]) -> None:
        """With a training slot free (by the board's active jobs), have a warm worker wait for the next job.

        A page's read of the board may be a second old, or may have caught a worker between the job it ended
        and the next it took (the files are read one by one): before a new process imports TensorFlow beside
        a training, the slots are counted again under the board's lock, which that hand-over holds."""
        if not self.warm_worker or _running(active) >= self.max_concurrent or standby_waiting():
            return
        try:
            with self._locked(forget=False):
                free = _running(self._read_views(active_only=True)) < self.max_concurrent
        except LabError:
            return
        if free:
            keep_standby(self.root)

    def pump_if_due(self, every_seconds: float = PUMP_EVERY_SECONDS) -> bool:
        """pump(), at most once per every_seconds for this board in this process; whether it pumped."""
        now = time.monotonic()
        with _last_pumped_lock:
            if now - _last_pumped.get(self.root, float("-inf")) < every_seconds:
                return False
            _last_pumped[self.root] = now
        self.pump()
        return True

    def _reap(self) -> bool:
        """Mark jobs whose process died as failed, and remove the oldest ended ones; whether any changed."""
        changed = False
        for v in self._read_views(active_only=True):
            if v.finished:
                continue
            if v.origin == "cli":
                pid = (read_spec(v.path) or {}).get("pid")
            else:
                launch = read_small(v.path / LAUNCH)
                if launch is None:
                    continue  # waiting in the queue
                pid, at = launch.get("pid"), launch.get("at")
                at = at if is_number(at) else 0.0
                if pid is None and time.time() - at < LAUNCH_GRACE_SECONDS:
                    continue  # being started right now
            if pid_alive(pid):
                continue
            current = self._view(v.path)
            if current is None or current.finished:
                continue  # it published its result just now
            reason = self._end_reason(v.path)
            try:
                _publish(v.path, _with(current.snapshot, phase=FAILED, message=reason, error=reason,
                                       eta_seconds=None))
            except OSError as exc:  # a full disk: the job is marked failed on a later look, once there is space
                _warn(("reap", v.path), "job %s ended, but its end could not be recorded yet: %s", v.job_id, exc)
                continue
            logger.warning("job %s failed: %s", v.job_id, reason)
            changed = True
        return self._prune() or changed

    def _end_reason(self, job_dir: Path) -> str:
        """Why a job's process ended without reporting a result, as far as this board can tell."""
        ended = read_small(job_dir / EXIT)
        returncode = ended.get("returncode") if ended is not None else _ended_here.get(job_dir)
        if isinstance(returncode, int) and not isinstance(returncode, bool):
            return exit_reason(returncode)
        reason = "The training process ended without reporting a result"
        free = free_space(self.runs_dir)
        if free is not None and free < LOW_SPACE_BYTES:
            return f"{reason}, probably because {space_note(self.runs_dir)}."
        return f"{reason} (killed, or the machine restarted)."

    def _start_queued(self) -> bool:
        """Start queued jobs into free slots; whether any started."""
        views = self._read_views(active_only=True)
        running, started_any = _running(views), False
        for v in views:
            if running >= self.max_concurrent:
                break
            if _startable(v):
                try:
                    started = self._launch(v)
                except OSError as exc:  # nothing was started: the job waits in the queue for the next pump
                    _warn(("launch", self.root), "job %s could not be started yet: %s", v.job_id, exc)
                    break
                if started:
                    running += 1
                    started_any = True
        if self.warm_worker and running < self.max_concurrent:
            keep_standby(self.root)
        return started_any

    def _launch(self, v: JobView) -> bool:
        """Start v's worker; whether it started. OSError when the launch could not be recorded (nothing runs)."""
        launched = time.time()  # kept with the pid: the worker times its start from it
        write_json(v.path / LAUNCH, {"pid": None, "at": launched})
        try:
            process = self._launcher(v.path)
        except OSError as exc:
            reason = f"The training process could not be started ({exc.strerror or exc})."
            _publish(v.path, _with(v.snapshot, phase=FAILED, message=reason, error=reason))
            return False
        try:
            write_json(v.path / LAUNCH, {"pid": process.pid, "at": launched})
        except OSError:
            # A worker nobody can find would train unseen and unstoppable: end it, and queue the job again.
            process.kill()
            process.wait()
            (v.path / LAUNCH).unlink(missing_ok=True)
            raise
        _watch(process, v.path, self)
        return True

    def _prune(self) -> bool:
        """Remove the oldest ended jobs beyond KEPT_FINISHED; whether any was."""
        ended = [d for d in self._job_dirs() if _exists(d / ENDED)]  # job ids sort by creation time
        old = ended[:-KEPT_FINISHED] if len(ended) > KEPT_FINISHED else []
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return bool(old)

    # -- a job trained by the calling process (the CLI) ------------------------------------------------

    def run_here(self, job: Job, owner: str = "cli") -> Snapshot:
        """Train job in this process, listed on the board like a worker's job (with Stop from any page).

        Ctrl-C asks it to stop after the current batch, keeping finished epochs; a second one aborts.
        What ended a failed or stopped job is re-raised, so the caller reports it as it always did.
        """
        fingerprints = [f"here-{secrets.token_hex(8)}" for _ in job.experiments]  # never taken for another run
        with self._locked():
            try:
                job_id = self._create(job.experiments, fingerprints, owner, "cli", pid=os.getpid())
            except OSError as exc:
                raise LabError(f"The training could not be listed on the job board: "
                               f"{disk_problem(exc, self.runs_dir)}.") from None
        job_dir = self.root / job_id
        try:
            snapshot = follow_training(job, job_dir)
        except KeyboardInterrupt:
            job.stop()
            print("\nStopping after the current batch; finished epochs are kept (Ctrl-C again aborts).",
                  file=sys.stderr, flush=True)
            snapshot = follow_training(job, job_dir, started=True)
        if job.exception is not None and (snapshot.phase == FAILED or not snapshot.run_dirs):
            # The caller reports the error where it was asked; a record of a job that saved nothing would
            # only clutter the runs folder.
            shutil.rmtree(job_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                if {p.name for p in self.root.iterdir()} <= {".lock"}:
                    shutil.rmtree(self.root)
            raise job.exception
        return snapshot


def _record_timings(job: Job, final: Snapshot, folder: Path) -> None:
    """Leave what each saved run of the ended job took in folder's timings file, for later estimates."""
    from core.training.estimate import record_timing

    for experiment, run_dir, seconds in zip(job.experiments, final.run_dirs, job.run_seconds):
        try:
            record_timing(folder, experiment.data, experiment.train, run_dir, seconds)
        except Exception:  # an estimate's aid must never cost the job its final status
            logger.exception("recording the timings of %s failed", run_dir)


def _with(snapshot: Snapshot, **changes) -> Snapshot:
    from dataclasses import replace

    return replace(snapshot, **changes)


def _publish(job_dir: Path, snapshot: Snapshot) -> None:
    write_json(job_dir / STATUS, {**snapshot.to_dict(), "written_at": time.time(), "pid": os.getpid()})
    if snapshot.finished:
        (job_dir / ENDED).touch()


def launch_worker(job_dir: Path) -> subprocess.Popen:
    """The warm worker, given job_dir, when one waits; else a new worker process for it."""
    process = _take_standby()
    if process is not None:
        try:
            process.stdin.write(f"{job_dir}\n".encode())
            process.stdin.close()
            return process
        except OSError:  # it ended while waiting: start one as usual
            process.kill()
            process.wait()
    return launch_module("core.training.worker", [job_dir], job_dir / LOG)


def _lab_environment() -> tuple:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("LAB_")))


def _take_standby() -> subprocess.Popen | None:
    global _standby
    with _standby_lock:
        process, _standby = _standby, None
    if process is None or process.poll() is not None:
        return None
    if _standby_env != _lab_environment():  # made for other settings (folders, preset): not this job's worker
        drop(process)
        return None
    return process


def standby_waiting() -> bool:
    """Whether this process's warm worker, made for the current settings, still waits."""
    with _standby_lock:
        return _standby is not None and _standby.poll() is None and _standby_env == _lab_environment()


def keep_standby(root: Path) -> None:
    """Start a warm worker in the background unless one for these settings waits already."""
    global _standby, _standby_env
    with _standby_lock:
        env = _lab_environment()
        if _standby is not None and _standby.poll() is None and _standby_env == env:
            return
        if _standby is not None:
            drop(_standby)
        try:
            root.mkdir(parents=True, exist_ok=True)
            _standby = launch_module("core.training.worker", ["--standby"], root / STANDBY_LOG, stdin_pipe=True)
        except OSError as exc:  # the next job starts a worker of its own, as without one
            _standby = None
            _warn(("standby", root), "no warm worker could be started: %s", exc)
            return
        _standby_env = env


def drop(process: subprocess.Popen) -> None:
    """End a warm worker that has no job: an empty input ends it, and the wait reaps it."""
    with contextlib.suppress(OSError):
        process.stdin.close()
    threading.Thread(target=process.wait, name="lab-standby-end", daemon=True).start()


def drop_standby() -> None:
    """End this process's warm worker, if any (tests, and a server shutting its board down)."""
    global _standby
    with _standby_lock:
        process, _standby = _standby, None
    if process is not None:
        drop(process)


def _record_exit(job_dir: Path, returncode: int) -> None:
    """Write how a job's worker ended, trying again while the disk is full, until it lands or the job is gone."""
    while True:
        try:
            write_json(job_dir / EXIT, {"returncode": returncode, "at": time.time()})
            return
        except OSError as exc:
            if not job_dir.is_dir():
                return
            _warn(("exit", job_dir), "how the worker of job %s ended is not recorded yet: %s", job_dir.name, exc)
            time.sleep(EXIT_RETRY_SECONDS)


def _watch(process: subprocess.Popen, job_dir: Path, board: Board) -> None:
    """Wait for a worker on a thread: record how it ended, then let the next queued job start.

    While the disk is full the exit file cannot be written: the exit code is kept in this process for the
    board (which marks the job failed once it can write again) and the write is tried again until it lands,
    or the job's folder is gone.
    """
    def wait() -> None:
        returncode = process.wait()
        _ended_here[job_dir] = returncode
        held = [job_dir]
        # A worker goes on with queued jobs (finish_and_claim): it ended holding the unfinished ones whose
        # launch record names it too. Found under the board's lock, so no pump marks them failed meanwhile
        # without their exit code.
        with contextlib.suppress(LabError), board._locked():
            for v in board.views(active_only=True):
                if v.path != job_dir and (read_small(v.path / LAUNCH) or {}).get("pid") == process.pid:
                    _ended_here[v.path] = returncode
                    held.append(v.path)
        for path in held:
            _record_exit(path, returncode)
        try:
            board.pump()
        except Exception:  # the board must outlive any one job; the next page view pumps again
            logger.exception("starting the next queued job failed")
        for path in held:
            _ended_here.pop(path, None)

    threading.Thread(target=wait, name=f"lab-worker-{job_dir.name}", daemon=True).start()


def follow_training(job: Job, job_dir: Path, poll_seconds: float = 0.1, publish_seconds: float = 0.25,
                    started: bool = False, finish: Callable[[Snapshot], None] | None = None) -> Snapshot:
    """Run job to its end in this process, publishing its progress and honouring the stop file.

    Progress is published a few times a second and at once when an epoch ends or a stop is seen, so a
    page polling the status file shows every epoch and "Stopping ..." without asking the trainer anything.
    A full disk skips progress (training goes on, and may still save its run once there is space); the final
    status must be published, or this raises the OSError. finish, when given, publishes the final status
    instead (a worker that may take the next job does so under the board's lock).
    """
    stop_file = job_dir / STOP
    if not started:
        job.start()
    published, last_key = 0.0, None
    while True:
        running = job.alive
        if not job.stop_requested and stop_file.exists():
            job.stop()
        snapshot = job.snapshot()
        if not running:
            _record_timings(job, snapshot, job_dir.parent)  # before the last publish: the next estimate uses them
            (finish or (lambda final: _publish(job_dir, final)))(snapshot)
            return snapshot
        key = (snapshot.phase, snapshot.index, snapshot.epoch, job.stop_requested)
        now = time.monotonic()
        if key != last_key or now - published >= publish_seconds:
            try:
                _publish(job_dir, snapshot)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                _warn(("progress", job_dir), "the progress of job %s is not published: %s", job_dir.name, exc)
            else:
                published, last_key = now, key
        time.sleep(poll_seconds)
