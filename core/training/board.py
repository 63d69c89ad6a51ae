"""The job board: every training of this installation, queued, running or finished, for every page to see.

A job is a folder under `<runs folder>/.jobs/<job-id>/`:

    spec.json    what to train (the experiments' configs and estimates), who asked (an owner token and
                 the origin: dashboard or cli), when, and each experiment's fingerprint
    launch.json  the pid of the worker process training it, once one was started
    status.json  the latest Snapshot, published by the process that trains (atomic rename, a few a second)
    stop         present once someone asked the job to stop
    exit.json    how the worker ended, written by the process that started it

Jobs from the dashboard train in a worker process (`python -m core.training.worker JOB_DIR`), never in the
server that shows them: TensorFlow's Python threads then never compete with the server for its
interpreter lock, a reload or a closed tab leaves the training alone, and a crash or an out-of-memory kill
ends that job only. At most the preset's `max_concurrent_jobs` train at once; later jobs wait in the order
they came. An experiment whose fingerprint (its data's files, its settings, its seed) matches a run that
finished here is not trained again, and a job identical to one queued or running is joined, not repeated.
"""
from __future__ import annotations

import contextlib
import fcntl
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

from core.runs.folders import open_run, pid_alive, write_json
from core.settings.config import data_from_dict, to_dict, train_from_dict
from core.settings.errors import LabError
from core.training.jobs import FAILED, PREPARING, QUEUED, STOPPED, Experiment, Job, Snapshot

logger = logging.getLogger(__name__)

JOBS_DIR = ".jobs"
SPEC, STATUS, LAUNCH, STOP, EXIT, LOG = "spec.json", "status.json", "launch.json", "stop", "exit.json", "worker.log"
ENDED = "ended"  # written beside a final status, so listing active jobs need not read finished ones
KEPT_FINISHED = 200  # finished jobs kept on the board for reuse and links; older ones are removed
# A launch that never recorded its worker's pid this long after it began counts as lost.
LAUNCH_GRACE_SECONDS = 60
REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_START = "worker-start.json"  # how long the latest worker took to start, for estimates
DEFAULT_WORKER_START_SECONDS = 4.0  # Python and TensorFlow starting on a quiet 2-core machine
# How often pages may pump one board, however many of them watch it: a look at dead workers and free slots
# is a few file reads under the board's lock, and every watching page asks every 2 s.
PUMP_EVERY_SECONDS = 2.0
_last_pumped: dict[Path, float] = {}
_last_pumped_lock = threading.Lock()


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
    recorded = _read(jobs_root(runs_dir) / WORKER_START)
    value = recorded.get("seconds") if isinstance(recorded, dict) else None
    if isinstance(value, (int, float)) and 0 < value < 600:
        return float(value)
    return DEFAULT_WORKER_START_SECONDS


def record_worker_start(runs_dir: str | Path, seconds: float) -> None:
    with contextlib.suppress(OSError):
        write_json(jobs_root(runs_dir) / WORKER_START, {"seconds": round(seconds, 3), "at": time.time()})


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def exit_reason(returncode: int) -> str:
    """One line on how a worker process ended without reporting a result."""
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


def _title(spec: dict) -> str:
    """The job's models by their honest names, e.g. "Baseline CNN, then MobileNetV2 transfer"."""
    from core.training.experiment import run_model_label

    names = []
    for e in spec.get("experiments", []):
        try:
            names.append(run_model_label(train_from_dict(e["train"])))
        except (KeyError, ValueError, TypeError, LabError):
            names.append("an unknown model")
    return ", then ".join(names)


class Board:
    """The jobs of one runs folder. Cheap to create: pages make one per script run."""

    def __init__(self, runs_dir: str | Path, max_concurrent: int | None = None,
                 launcher: Callable[[Path], subprocess.Popen] | None = None):
        self.runs_dir = Path(runs_dir)
        self.root = jobs_root(runs_dir)
        if max_concurrent is None:
            from core.settings.presets import active_preset

            max_concurrent = active_preset().max_concurrent_jobs
        self.max_concurrent = max(1, int(max_concurrent))
        self._launcher = launcher or launch_worker

    # -- reading ---------------------------------------------------------------------------------------

    def _job_dirs(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return []

    def _view(self, path: Path) -> JobView | None:
        spec = _read(path / SPEC)
        if not isinstance(spec, dict) or not isinstance(spec.get("experiments"), list):
            return None
        status = _read(path / STATUS)
        snapshot = None
        if isinstance(status, dict):
            try:
                snapshot = Snapshot.from_dict(status)
            except (KeyError, TypeError, ValueError):
                snapshot = None
        if snapshot is None:
            try:
                snapshot = Job(_experiments_from_spec(spec), self.runs_dir).snapshot()
            except (KeyError, TypeError, ValueError, LabError):
                return None
            if (path / LAUNCH).exists():
                snapshot = _with(snapshot, phase=PREPARING, message="Starting the training process ...")
        elif snapshot.eta_seconds is not None and not snapshot.finished:
            # The status is as old as its last write; the time since then has passed for the ETA too.
            age = max(0.0, time.time() - float(status.get("written_at", time.time())))
            snapshot = _with(snapshot, eta_seconds=max(0.0, snapshot.eta_seconds - age),
                             elapsed_seconds=snapshot.elapsed_seconds + age)
        return JobView(job_id=path.name, path=path, created=float(spec.get("created", 0)),
                       origin=str(spec.get("origin", "dashboard")), owner=str(spec.get("owner", "")),
                       title=_title(spec), source=str(spec["experiments"][0]["data"].get("source", "?")),
                       fingerprints=tuple(spec.get("fingerprints", ())), snapshot=snapshot)

    def views(self, active_only: bool = False) -> list[JobView]:
        """Every job (or every unfinished one), oldest first, queued ones with their place and wait."""
        dirs = self._job_dirs()
        if active_only:
            dirs = [d for d in dirs if not (d / ENDED).exists()]
        views = [v for v in map(self._view, dirs) if v is not None]
        views.sort(key=lambda v: (v.created, v.job_id))
        return self._with_queue(views)

    def active(self) -> list[JobView]:
        return [v for v in self.views(active_only=True) if v.active]

    def view(self, job_id: str) -> JobView | None:
        if not isinstance(job_id, str) or not job_id.replace("-", "").isalnum():
            return None
        return next((v for v in self.views() if v.job_id == job_id), None)

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
            estimates = [e.estimated_seconds for e in _experiments_from_spec(_read(v.path / SPEC))]
            if any(e is None for e in estimates):
                unknown = True
            else:
                slots[0] = start + sum(estimates)
        return out

    def finished_run(self, fingerprint: str) -> Path | None:
        """The newest complete run (all its epochs) trained here with this fingerprint, if it still exists."""
        for v in reversed(self.views()):
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
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def submit(self, experiments: list[Experiment], fingerprints: list[str], owner: str,
               origin: str = "dashboard") -> Submission:
        """Queue experiments as one job, train nothing twice, and start what the slots allow."""
        if not experiments or len(experiments) != len(fingerprints):
            raise ValueError("one fingerprint per experiment, and at least one experiment")
        with self._locked():
            self._reap()
            reused = {i: run for i, fp in enumerate(fingerprints) if (run := self.finished_run(fp)) is not None}
            todo = [i for i in range(len(experiments)) if i not in reused]
            if not todo:
                return Submission(None, False, reused)
            wanted = tuple(fingerprints[i] for i in todo)
            for v in self.views(active_only=True):
                if v.active and v.fingerprints == wanted:
                    return Submission(v.job_id, True, reused)
            job_id = self._create([experiments[i] for i in todo], list(wanted), owner, origin)
            self._start_queued()
        return Submission(job_id, False, reused)

    def _create(self, experiments: list[Experiment], fingerprints: list[str], owner: str, origin: str,
                pid: int | None = None) -> str:
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        tmp = self.root / f".new-{job_id}"
        tmp.mkdir(parents=True)
        spec = {"job_id": job_id, "created": time.time(), "origin": origin, "owner": owner, "pid": pid,
                "fingerprints": fingerprints,
                "experiments": [{"data": to_dict(e.data), "train": to_dict(e.train),
                                 "estimated_seconds": e.estimated_seconds, "fine_tune_seconds": e.fine_tune_seconds}
                                for e in experiments]}
        write_json(tmp / SPEC, spec)
        os.replace(tmp, self.root / job_id)  # a job appears whole or not at all
        return job_id

    def stop(self, job_id: str) -> None:
        """Ask a running job to stop after its current batch; a queued one leaves the queue at once."""
        view = self.view(job_id)
        if view is None or view.finished:
            return
        with self._locked():
            (view.path / STOP).touch()
            if not (view.path / LAUNCH).exists() and view.origin != "cli":
                _publish(view.path, _with(view.snapshot, phase=STOPPED, eta_seconds=None,
                                          message="Cancelled before it started; nothing was trained."))
            self._start_queued()

    def pump(self) -> None:
        """Mark jobs whose process died as failed and start queued jobs into free slots."""
        with self._locked():
            self._reap()
            self._start_queued()

    def pump_if_due(self, every_seconds: float = PUMP_EVERY_SECONDS) -> bool:
        """pump(), at most once per every_seconds for this board in this process; whether it pumped."""
        now = time.monotonic()
        with _last_pumped_lock:
            if now - _last_pumped.get(self.root, float("-inf")) < every_seconds:
                return False
            _last_pumped[self.root] = now
        self.pump()
        return True

    def _reap(self) -> None:
        for v in self.views(active_only=True):
            if v.finished:
                continue
            if v.origin == "cli":
                pid = (_read(v.path / SPEC) or {}).get("pid")
            else:
                launch = _read(v.path / LAUNCH)
                if not isinstance(launch, dict):
                    continue  # waiting in the queue
                pid = launch.get("pid")
                if pid is None and time.time() - float(launch.get("at") or 0) < LAUNCH_GRACE_SECONDS:
                    continue  # being started right now
            if pid_alive(pid):
                continue
            current = self._view(v.path)
            if current is None or current.finished:
                continue  # it published its result just now
            ended = _read(v.path / EXIT)
            if isinstance(ended, dict) and isinstance(ended.get("returncode"), int):
                reason = exit_reason(ended["returncode"])
            else:
                reason = "The training process ended without reporting a result (killed, or the machine restarted)."
            logger.warning("job %s failed: %s", v.job_id, reason)
            _publish(v.path, _with(current.snapshot, phase=FAILED, message=reason, error=reason, eta_seconds=None))
        self._prune()

    def _start_queued(self) -> None:
        views = self.views(active_only=True)
        running = sum(1 for v in views if v.active and not v.queued)
        for v in views:
            if running >= self.max_concurrent:
                break
            if v.queued and not (v.path / LAUNCH).exists() and not (v.path / STOP).exists():
                launched = time.time()  # kept with the pid: the worker times its start from it
                write_json(v.path / LAUNCH, {"pid": None, "at": launched})
                try:
                    process = self._launcher(v.path)
                except OSError as exc:
                    reason = f"The training process could not be started ({exc.strerror or exc})."
                    _publish(v.path, _with(v.snapshot, phase=FAILED, message=reason, error=reason))
                    continue
                write_json(v.path / LAUNCH, {"pid": process.pid, "at": launched})
                _watch(process, v.path, self)
                running += 1

    def _prune(self) -> None:
        ended = [d for d in self._job_dirs() if (d / ENDED).exists()]  # job ids sort by creation time
        for path in ended[:-KEPT_FINISHED] if len(ended) > KEPT_FINISHED else []:
            shutil.rmtree(path, ignore_errors=True)

    # -- a job trained by the calling process (the CLI) ------------------------------------------------

    def run_here(self, job: Job, owner: str = "cli") -> Snapshot:
        """Train job in this process, listed on the board like a worker's job (with Stop from any page).

        Ctrl-C asks it to stop after the current batch, keeping finished epochs; a second one aborts.
        What ended a failed or stopped job is re-raised, so the caller reports it as it always did.
        """
        fingerprints = [f"here-{secrets.token_hex(8)}" for _ in job.experiments]  # never taken for another run
        with self._locked():
            job_id = self._create(job.experiments, fingerprints, owner, "cli", pid=os.getpid())
        job_dir = self.root / job_id
        try:
            snapshot = follow(job, job_dir)
        except KeyboardInterrupt:
            job.stop()
            print("\nStopping after the current batch; finished epochs are kept (Ctrl-C again aborts).",
                  file=sys.stderr, flush=True)
            snapshot = follow(job, job_dir, started=True)
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
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(job_dir / LOG, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "core.training.worker", str(job_dir)], cwd=REPO_ROOT,
                                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _watch(process: subprocess.Popen, job_dir: Path, board: Board) -> None:
    """Wait for a worker on a thread: record how it ended, then let the next queued job start."""
    def wait() -> None:
        returncode = process.wait()
        with contextlib.suppress(OSError):
            write_json(job_dir / EXIT, {"returncode": returncode, "at": time.time()})
        try:
            board.pump()
        except Exception:  # the board must outlive any one job; the next page view pumps again
            logger.exception("starting the next queued job failed")

    threading.Thread(target=wait, name=f"lab-worker-{job_dir.name}", daemon=True).start()


def follow(job: Job, job_dir: Path, poll_seconds: float = 0.1, publish_seconds: float = 0.25,
           started: bool = False) -> Snapshot:
    """Run job to its end in this process, publishing its progress and honouring the stop file.

    Progress is published a few times a second and at once when an epoch ends or a stop is seen, so a
    page polling the status file shows every epoch and "Stopping ..." without asking the trainer anything.
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
            _publish(job_dir, snapshot)
            return snapshot
        key = (snapshot.phase, snapshot.index, snapshot.epoch, job.stop_requested)
        now = time.monotonic()
        if key != last_key or now - published >= publish_seconds:
            _publish(job_dir, snapshot)
            published, last_key = now, key
        time.sleep(poll_seconds)
