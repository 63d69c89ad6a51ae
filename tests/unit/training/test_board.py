"""The job board: a FIFO queue over worker processes, reuse of identical experiments, contained crashes.

The queue tests launch stand-in workers (`sleep`) so that they need no TensorFlow; the last tests start
real worker processes that train on the demo folder.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from core.settings.config import DataConfig, ModelKind, TrainConfig
from core.training.board import (
    EXIT,
    LAUNCH,
    STATUS,
    Board,
    _publish,
    experiment_fingerprint,
    jobs_root,
    worker_start_seconds,
)
from core.training.estimate import TIMINGS_FILE
from core.training.jobs import DONE, FAILED, STOPPED, Experiment
from core.training.worker import WORKER_NICENESS

DATA = DataConfig(source="folder:unused", image_size=32, batch_size=4)


def experiment(kind=ModelKind.BASELINE, epochs=2, estimated=10.0) -> Experiment:
    return Experiment(DATA, TrainConfig(model=kind, epochs=epochs), estimated)


class SleepingWorkers:
    """Stands in for worker processes: each launch is a `sleep` the test can end or kill."""

    def __init__(self):
        self.started: list[Path] = []
        self.processes: list[subprocess.Popen] = []

    def __call__(self, job_dir: Path) -> subprocess.Popen:
        self.started.append(job_dir)
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.processes.append(process)
        return process

    def finish(self, board: Board, job_dir: Path, phase=DONE, run_dirs=()) -> None:
        """What a worker does at its end: publish the final snapshot, then exit."""
        snapshot = board.view(job_dir.name).snapshot
        _publish(job_dir, replace(snapshot, phase=phase, message=phase, run_dirs=tuple(run_dirs), eta_seconds=None))
        process = self.processes[self.started.index(job_dir)]
        process.terminate()
        process.wait()

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def workers():
    stand_ins = SleepingWorkers()
    yield stand_ins
    stand_ins.close()


def wait_until(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_jobs_beyond_the_limit_wait_in_order_with_their_place_and_wait(tmp_path, workers):
    board = Board(tmp_path, max_concurrent=1, launcher=workers)
    first = board.submit([experiment(estimated=30.0)], ["a"], owner="alice")
    second = board.submit([experiment(estimated=20.0), experiment(ModelKind.MOBILENET_V2, estimated=5.0)],
                          ["b", "c"], owner="bob")
    third = board.submit([experiment(estimated=7.0)], ["d"], owner="carol")
    assert [Path(p).name for p in workers.started] == [first.job_id]
    views = {v.job_id: v for v in board.views()}
    assert views[first.job_id].queue_position is None and not views[first.job_id].queued
    assert (views[second.job_id].queue_position, views[third.job_id].queue_position) == (1, 2)
    # The running job has no measured ETA yet (no status published), so no promise is made.
    assert views[second.job_id].wait_seconds is None
    running = board.view(first.job_id)
    _publish(running.path, replace(running.snapshot, phase="training", eta_seconds=12.0))
    views = {v.job_id: v for v in board.views()}
    assert views[second.job_id].wait_seconds == pytest.approx(12.0, abs=1.0)
    assert views[third.job_id].wait_seconds == pytest.approx(12.0 + 25.0, abs=1.0)
    # The first job ends; the next in line starts, and only it.
    workers.finish(board, running.path)
    board.pump()
    assert [Path(p).name for p in workers.started] == [first.job_id, second.job_id]
    assert board.view(third.job_id).queue_position == 1


def test_a_cancelled_queued_job_leaves_the_queue_and_never_starts(tmp_path, workers):
    board = Board(tmp_path, max_concurrent=1, launcher=workers)
    first = board.submit([experiment()], ["a"], owner="alice")
    queued = board.submit([experiment()], ["b"], owner="bob")
    later = board.submit([experiment()], ["c"], owner="carol")
    board.stop(queued.job_id)
    view = board.view(queued.job_id)
    assert view.snapshot.phase == STOPPED and "Cancelled before it started" in view.snapshot.message
    assert board.view(later.job_id).queue_position == 1
    workers.finish(board, board.view(first.job_id).path)
    board.pump()
    assert [Path(p).name for p in workers.started] == [first.job_id, later.job_id]


def test_identical_experiments_join_the_running_job_and_reuse_finished_runs(tmp_path, workers, trained_runs):
    board = Board(tmp_path, max_concurrent=1, launcher=workers)
    first = board.submit([experiment(), experiment(ModelKind.MOBILENET_V2)], ["base", "transfer"], owner="alice")
    again = board.submit([experiment(), experiment(ModelKind.MOBILENET_V2)], ["base", "transfer"], owner="bob")
    assert again.attached and again.job_id == first.job_id
    assert len(workers.started) == 1 and len(board.views()) == 1
    # Once it has finished, the same experiments are not trained again: the runs are handed back.
    runs = (trained_runs["baseline"], trained_runs["mobilenet_v2"])
    workers.finish(board, board.view(first.job_id).path, run_dirs=runs)
    later = board.submit([experiment(), experiment(ModelKind.MOBILENET_V2)], ["base", "transfer"], owner="carol")
    assert later.job_id is None and later.reused == {0: runs[0], 1: runs[1]}
    # Half the same: only the new experiment is queued.
    mixed = board.submit([experiment(), experiment(ModelKind.MOBILENET_V2, epochs=9)], ["base", "other"], owner="dan")
    assert mixed.reused == {0: runs[0]} and mixed.job_id is not None
    assert board.view(mixed.job_id).fingerprints == ("other",)
    assert len(workers.started) == 2


def test_a_worker_killed_by_the_system_shows_as_failed_with_one_line(tmp_path, workers):
    board = Board(tmp_path, max_concurrent=1, launcher=workers)
    job = board.submit([experiment()], ["a"], owner="alice")
    queued = board.submit([experiment()], ["b"], owner="bob")
    os.kill(workers.processes[0].pid, signal.SIGKILL)
    wait_until(lambda: board.view(job.job_id).finished)  # the watcher thread records the end
    view = board.view(job.job_id)
    assert view.snapshot.phase == FAILED
    assert view.snapshot.message == ("The training process was killed by SIGKILL (the system usually does this "
                                     "when memory runs out); nothing of this job was saved as a run.")
    assert json.loads((view.path / EXIT).read_text())["returncode"] == -signal.SIGKILL
    # The slot is free again for the next in line.
    wait_until(lambda: len(workers.started) == 2)
    assert Path(workers.started[1]).name == queued.job_id


def test_a_worker_that_vanished_while_nobody_watched_is_failed_on_the_next_look(tmp_path):
    # The launched process outlives the test's look, so this server's own watcher has nothing to report;
    # the job's record names a process that no longer exists, as after a server restart.
    launched = []

    def launch(_job_dir):
        launched.append(subprocess.Popen(["sleep", "60"]))
        return launched[-1]

    board = Board(tmp_path, max_concurrent=1, launcher=launch)
    try:
        job = board.submit([experiment()], ["a"], owner="alice")
        path = board.view(job.job_id).path
        (path / LAUNCH).write_text(json.dumps({"pid": 2**22 + 12345, "at": time.time()}))  # no such process
        board.pump()
        view = board.view(job.job_id)
        assert not (path / EXIT).exists()
        assert view.snapshot.phase == FAILED and "without reporting a result" in view.snapshot.message
    finally:
        for process in launched:
            process.kill()
            process.wait()


def test_pages_pump_a_board_at_most_once_per_interval_however_many_watch(tmp_path):
    first, second = Board(tmp_path, max_concurrent=1), Board(tmp_path, max_concurrent=1)
    other = Board(tmp_path / "elsewhere", max_concurrent=1)
    assert first.pump_if_due(every_seconds=60)
    assert not second.pump_if_due(every_seconds=60)  # another page of the same server, same runs folder
    assert other.pump_if_due(every_seconds=60)  # another board is pumped on its own schedule
    assert second.pump_if_due(every_seconds=0)


def test_the_board_ignores_what_is_not_a_job(tmp_path, workers):
    board = Board(tmp_path, max_concurrent=2, launcher=workers)
    root = jobs_root(tmp_path)
    (root / "junk").mkdir(parents=True)
    (root / "junk" / "spec.json").write_text("{not json")
    (root / "odd").mkdir()
    (root / "odd" / "spec.json").write_text(json.dumps({"experiments": "many"}))
    job = board.submit([experiment()], ["a"], owner="alice")
    assert [v.job_id for v in board.views()] == [job.job_id]
    assert board.view("../etc") is None and board.view("no-such-job") is None


def test_fingerprints_follow_the_files_the_settings_and_the_seed(demo_folder, tmp_path):
    import shutil

    from core.data.sources import open_source

    data = DataConfig(source=f"folder:{demo_folder}", image_size=32, batch_size=8)
    train = TrainConfig(model=ModelKind.BASELINE, epochs=1)
    fp = experiment_fingerprint(open_source(data), data, train)
    assert fp == experiment_fingerprint(open_source(data), data, train)
    assert fp != experiment_fingerprint(open_source(data), replace(data, seed=7), train)
    assert fp != experiment_fingerprint(open_source(data), data, replace(train, epochs=2))
    copy = tmp_path / "copy"
    shutil.copytree(demo_folder, copy)
    moved = replace(data, source=f"folder:{copy}")
    before = experiment_fingerprint(open_source(moved), moved, train)
    first = min((copy / min(os.listdir(copy))).iterdir())
    first.write_bytes(first.read_bytes())  # touched: another modification time
    os.utime(first, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert experiment_fingerprint(open_source(moved), moved, train) != before


# -- real worker processes ------------------------------------------------------------------------------

def real_experiment(demo_folder, epochs, seed=42) -> Experiment:
    data = DataConfig(source=f"folder:{demo_folder}", image_size=48, batch_size=16, limit=48, seed=seed)
    return Experiment(data, TrainConfig(model=ModelKind.BASELINE, epochs=epochs), 20.0)


def test_a_worker_process_trains_publishes_progress_and_stops_within_a_batch(tmp_path, demo_folder):
    board = Board(tmp_path, max_concurrent=1)
    job = board.submit([real_experiment(demo_folder, epochs=400)], ["long"], owner="alice")
    wait_until(lambda: board.view(job.job_id).snapshot.epoch >= 1 or board.view(job.job_id).finished, seconds=180)
    assert not board.view(job.job_id).finished, board.view(job.job_id).snapshot.message
    status = json.loads((board.view(job.job_id).path / STATUS).read_text())
    assert status["pid"] != os.getpid()  # trained in its own process
    # Its start, from the board launching it to TensorFlow ready, is what the next estimate counts first.
    launched = json.loads((board.view(job.job_id).path / LAUNCH).read_text())
    assert launched["pid"] == status["pid"]
    assert 0.5 < worker_start_seconds(tmp_path) < time.time() - launched["at"]
    # ... at a lower priority than the server, so pages and clicks are served first while it trains
    assert psutil.Process(status["pid"]).nice() == min(19, os.nice(0) + WORKER_NICENESS)
    board.stop(job.job_id)
    asked = time.monotonic()
    # The worker sees the stop file and training ends after its current batch: the published step stops.
    wait_until(lambda: board.view(job.job_id).snapshot.phase in ("saving", STOPPED)
               or "Stopping" in board.view(job.job_id).snapshot.message, seconds=30)
    wait_until(lambda: board.view(job.job_id).finished, seconds=120)
    view = board.view(job.job_id)
    assert view.snapshot.phase == STOPPED, view.snapshot.message
    run = view.snapshot.run_dirs[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_early"] is True and 1 <= metrics["epochs_completed"] < 400
    assert time.monotonic() - asked < 120
    assert not (board.root / TIMINGS_FILE).exists()  # a stopped run says nothing of how long a whole one takes


def test_a_crashing_worker_leaves_no_run_and_the_board_keeps_serving(tmp_path, demo_folder):
    board = Board(tmp_path, max_concurrent=1)
    doomed = board.submit([real_experiment(demo_folder, epochs=400, seed=1)], ["doomed"], owner="alice")
    after = board.submit([real_experiment(demo_folder, epochs=1, seed=2)], ["after"], owner="bob")
    wait_until(lambda: board.view(doomed.job_id).snapshot.phase == "training", seconds=180)
    pid = json.loads((board.view(doomed.job_id).path / LAUNCH).read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: board.view(doomed.job_id).finished, seconds=30)
    assert "killed by SIGKILL" in board.view(doomed.job_id).snapshot.message
    wait_until(lambda: board.view(after.job_id).finished, seconds=180)
    view = board.view(after.job_id)
    assert view.snapshot.phase == DONE, view.snapshot.message
    from core.runs.folders import clean_incomplete, list_runs

    clean_incomplete(tmp_path)
    assert [r.path for r in list_runs(tmp_path).runs] == list(view.snapshot.run_dirs)
    assert list_runs(tmp_path).incomplete == []
