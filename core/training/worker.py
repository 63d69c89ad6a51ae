"""`python -m core.training.worker JOB_DIR`: train one job of the board in a process of its own.

Started by core.training.board for the dashboard. It reads the job's spec, trains its experiments with
the same engine the CLI uses (core.training.jobs.Job) and publishes progress into the job folder until
the job ends; a stop file there stops it after the current batch, keeping finished epochs as a run.
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
from core.training.board import (
    EXIT_DISK_FULL,
    LAUNCH,
    _experiments_from_spec,
    _publish,
    follow_training,
    read_small,
    read_spec,
    record_worker_start,
    space_note,
)
from core.training.jobs import FAILED, Job

logger = logging.getLogger("core.training.worker")

# Trainings yield the CPU to the server: a click, a page or a prediction is served at once, while a training
# alone on the machine runs at full speed (niceness only matters when both want the same core).
WORKER_NICENESS = 10


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m core.training.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[0])
    os.nice(WORKER_NICENESS)
    spec = read_spec(job_dir)
    try:
        experiments = _experiments_from_spec(spec)
        runs_dir = job_dir.parent.parent
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        logger.error("unreadable job spec in %s: %s", job_dir, exc)
        return 2
    # Imported before the job starts, so the time it takes is measured once and estimates can count it.
    import tensorflow  # noqa: F401
    import tensorflow_hub  # noqa: F401
    import tf_keras  # noqa: F401

    record_worker_start(runs_dir, _start_seconds(job_dir))
    job = Job(experiments, runs_dir)
    try:
        final = follow_training(job, job_dir)
    except Exception as exc:  # publishing itself failed (disk full, folder removed): say so if possible
        logger.exception("the job could not be followed")
        full = is_disk_full(exc)
        reason = f"Training failed: {space_note(runs_dir)}." if full else f"Training failed: {exc}"
        try:
            from dataclasses import replace

            _publish(job_dir, replace(job.snapshot(), phase=FAILED, error=reason if full else str(exc), message=reason))
        except OSError as again:
            # Nothing here can be written: the exit code tells the board why, and it records the job's end.
            return EXIT_DISK_FULL if full or is_disk_full(again) else 1
        return 1
    record_job(runs_dir, spec, final.run_dirs)  # the room's ledger outlives this job's folder
    logger.info("job %s ended: %s", job_dir.name, final.message)
    return 0


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
