"""`python -m core.training.worker JOB_DIR`: train one job of the board in a process of its own.

Started by core.training.board for the dashboard. It reads the job's spec, trains its experiments with
the same engine the CLI uses (core.training.jobs.Job) and publishes progress into the job folder until
the job ends; a stop file there stops it after the current batch, keeping finished epochs as a run.

`python -m core.training.worker --standby` is a warm worker: it imports TensorFlow first, then waits for one
job folder's path on its standard input (an empty input ends it), so the job does not wait for TensorFlow.
"""
from __future__ import annotations

import time

STARTED = time.monotonic()  # as early as this module can see: the interpreter's own start is not counted

import logging
import os
import sys
from pathlib import Path

from core.runs.room import record_job
from core.settings.files import is_disk_full
from core.settings.processes import LOG_FORMAT, yield_cpu
from core.training import efficiency
from core.training.board import (
    EXIT_DISK_FULL,
    LAUNCH,
    LOG,
    Board,
    _experiments_from_spec,
    _publish,
    follow_training,
    read_joiners,
    read_small,
    read_spec,
    record_worker_start,
    space_note,
)
from core.training.jobs import DONE, FAILED, STOPPED, Job

logger = logging.getLogger("core.training.worker")

STANDBY = "--standby"
# A worker takes the next queued job itself after its own, up to this many jobs and while it stays under
# this size (TensorFlow's memory is not all given back between jobs; a fresh process starts from nothing).
MAX_JOBS_PER_PROCESS = 20
MAX_REUSED_BYTES = 1_200_000_000
READY = "warm worker ready: waiting for a job"


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if len(argv) != 1:
        print(f"usage: python -m core.training.worker JOB_DIR | {STANDBY}", file=sys.stderr)
        return 2
    yield_cpu()
    if argv[0] == STANDBY:
        _import_tensorflow()
        logger.info(READY)
        job_dir = _wait_for_job()
        if job_dir is None:
            return 0
    else:
        job_dir = Path(argv[0])
    done = 0
    while True:
        done += 1
        # After its job, a worker takes the next queued one itself: TensorFlow is started already, and a room's
        # small jobs in line each skip a process's start. Not after a failure, or once the process has grown.
        code, job_dir = _train(job_dir, may_continue=done < MAX_JOBS_PER_PROCESS)
        if job_dir is None:
            return code
        _log_to(job_dir)
        _forget_models()


def _train(job_dir: Path, may_continue: bool) -> tuple[int, Path | None]:
    """Train one job of the board to its end: the process's exit code for it, and the next job it took."""
    spec = read_spec(job_dir)
    try:
        experiments = _experiments_from_spec(spec)
        runs_dir = job_dir.parent.parent
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        logger.error("unreadable job spec in %s: %s", job_dir, exc)
        return 2, None
    _import_tensorflow()
    record_worker_start(runs_dir, _start_seconds(job_dir))
    job = Job(experiments, runs_dir, _runner(spec, job_dir))
    taken: list[Path] = []

    def finish(final) -> None:
        size = _resident_bytes()
        if may_continue and final.phase in (DONE, STOPPED) and size < MAX_REUSED_BYTES:
            taken.extend(filter(None, [Board(runs_dir).finish_and_claim(job_dir, final, os.getpid())]))
            return
        if size >= MAX_REUSED_BYTES:
            logger.info("this process holds %.2f GB: it takes no other job", size / 1e9)
        _publish(job_dir, final)

    try:
        final = follow_training(job, job_dir, finish=finish)
    except Exception as exc:  # publishing itself failed (disk full, folder removed): say so if possible
        logger.exception("the job could not be followed")
        full = is_disk_full(exc)
        reason = f"Training failed: {space_note(runs_dir)}." if full else f"Training failed: {exc}"
        try:
            from dataclasses import replace

            _publish(job_dir, replace(job.snapshot(), phase=FAILED, error=reason if full else str(exc), message=reason))
        except OSError as again:
            # Nothing here can be written: the exit code tells the board why, and it records the job's end.
            return EXIT_DISK_FULL if full or is_disk_full(again) else 1, None
        return 1, None
    record_job(runs_dir, spec, final.run_dirs, read_joiners(job_dir))  # the room's ledger outlives this job's folder
    logger.info("job %s ended: %s", job_dir.name, final.message)
    if taken:
        logger.info("taking job %s next", taken[0].name)
    return 0, (taken[0] if taken else None)


def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return MAX_REUSED_BYTES  # unknown: do not take another job


def _forget_models() -> None:
    """The finished job's models and graphs, before the next job builds its own."""
    import gc

    import tf_keras

    tf_keras.backend.clear_session()
    gc.collect()


def _runner(spec: dict, job_dir: Path):
    """What the job's experiments are for: trained as runs (the default), or a data efficiency measurement."""
    task = spec.get("task")
    if isinstance(task, dict) and task.get("kind") == efficiency.TASK:
        return efficiency.board_runner(task, job_dir)
    return None


def _import_tensorflow() -> None:
    """Imported before the job starts, so the time it takes is measured once and estimates can count it."""
    import tensorflow  # noqa: F401
    import tensorflow_hub  # noqa: F401
    import tf_keras  # noqa: F401

    import core.training.experiment  # noqa: F401  (the models, data pipeline and hub loading it brings)


def _wait_for_job() -> Path | None:
    """The job folder a warm worker is given, its output then going to that job's log; None: none will come."""
    line = sys.stdin.readline().strip()
    if not line:
        return None
    job_dir = Path(line)
    _log_to(job_dir)
    return job_dir


def _log_to(job_dir: Path) -> None:
    """This process's output from now on goes to job_dir's log."""
    with open(job_dir / LOG, "ab") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())


def _start_seconds(job_dir: Path) -> float:
    """Seconds from the board launching this process to TensorFlow being ready in it: the process's start,
    the interpreter's and every import, as a person waits for them (the board writes the launch time)."""
    launch = read_small(job_dir / LAUNCH)
    launched = launch.get("at") if launch is not None else None
    ready = time.time()
    if isinstance(launched, (int, float)) and 0 < ready - launched < 600:
        return ready - launched
    return time.monotonic() - STARTED  # launched by hand, or the clock moved: what this module saw


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
