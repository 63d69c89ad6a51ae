"""The warm worker: TensorFlow imported before the job comes, so a small training does not wait for it.

Real processes: a board with a warm worker trains a job in the process that waited, that process's start
counts as nearly nothing, and a new one waits only while a training slot is free.
"""
from __future__ import annotations

import json
import time

import pytest

from core.settings.config import DataConfig, ModelKind, TrainConfig
from core.training import board as board_module
from core.training.board import LAUNCH, STANDBY_LOG, STATUS, Board, drop_standby, worker_start_seconds
from core.training.jobs import DONE, Experiment
from core.training.worker import READY


def wait_until(condition, seconds: float, every: float = 0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"not within {seconds} s")


def standby():
    return board_module._standby


def ready(board) -> bool:
    """Whether the warm worker has imported everything a job needs and waits (it says so in its log)."""
    return READY in (board.root / STANDBY_LOG).read_text()


@pytest.fixture(autouse=True)
def _no_leftover_standby():
    drop_standby()
    yield
    drop_standby()


def tiny(demo_folder, seed: int) -> Experiment:
    data = DataConfig(source=f"folder:{demo_folder}", image_size=48, batch_size=16, limit=32, seed=seed)
    return Experiment(data, TrainConfig(model=ModelKind.BASELINE, epochs=1), 10.0)


def test_a_job_takes_the_waiting_worker_and_a_new_one_waits_only_while_a_slot_is_free(tmp_path, demo_folder,
                                                                                       monkeypatch):
    board = Board(tmp_path, max_concurrent=1, warm_worker=True)
    board.keep_warm(board.active())
    waiting = standby()
    assert waiting is not None and waiting.poll() is None
    assert (board.root / STANDBY_LOG).exists()
    wait_until(lambda: ready(board), seconds=120, every=0.5)
    board.keep_warm(board.active())
    assert standby() is waiting  # one at a time

    job = board.submit([tiny(demo_folder, seed=1)], ["first"], owner="alice")
    launched = json.loads((board.view(job.job_id).path / LAUNCH).read_text())
    assert launched["pid"] == waiting.pid  # the job went to the worker that waited
    # The only training slot is taken now: no second TensorFlow process waits beside it.
    assert standby() is None
    board.keep_warm(board.active())
    assert standby() is None
    # Not even for a page whose read of the board is stale, or caught the worker between two jobs.
    board.keep_warm([])
    assert standby() is None

    wait_until(lambda: board.view(job.job_id).finished, seconds=120)
    view = board.view(job.job_id)
    assert view.snapshot.phase == DONE, view.snapshot.message
    status = json.loads((view.path / STATUS).read_text())
    assert status["pid"] == waiting.pid
    assert worker_start_seconds(tmp_path) < 1.0  # TensorFlow was ready when the job came
    # Its output went to the job's log from the moment it took the job, not to the warm worker's log.
    assert f"job {job.job_id} ended" in (view.path / "worker.log").read_text()
    assert job.job_id not in (board.root / STANDBY_LOG).read_text()
    # The slot is free again: the end of the job (the board's pump) put a new warm worker in wait.
    wait_until(lambda: standby() is not None, seconds=30)
    stale = standby()
    assert stale.pid != waiting.pid

    # One made for other settings (folders, preset) is not given a job: a worker of its own is, and it ends.
    monkeypatch.setenv("LAB_OTHER_SETTING", "1")  # any LAB_* setting the warm worker did not inherit
    job = board.submit([tiny(demo_folder, seed=2)], ["second"], owner="bob")
    monkeypatch.undo()
    assert json.loads((board.view(job.job_id).path / LAUNCH).read_text())["pid"] != stale.pid
    wait_until(lambda: stale.poll() is not None, seconds=120)  # ended, not left waiting
    assert stale.returncode == 0
    wait_until(lambda: board.view(job.job_id).finished, seconds=120)
    assert board.view(job.job_id).snapshot.phase == DONE




def test_a_worker_takes_the_next_queued_job_itself_and_the_slot_stays_one(tmp_path, demo_folder):
    board = Board(tmp_path, max_concurrent=1)
    first = board.submit([tiny(demo_folder, seed=3)], ["a"], owner="alice")
    second = board.submit([tiny(demo_folder, seed=4)], ["b"], owner="bob")
    assert board.view(second.job_id).queued
    running = []

    def done() -> bool:
        board.pump()  # as watching pages do: a free slot would be given to a new process here
        running.append(sum(1 for v in board.active() if not v.queued))
        return board.view(second.job_id).finished

    wait_until(done, seconds=240, every=0.05)
    assert max(running) == 1  # never two at once: the slot passed from one job to the next
    worker = json.loads((board.view(first.job_id).path / LAUNCH).read_text())["pid"]
    taken = json.loads((board.view(second.job_id).path / LAUNCH).read_text())
    assert taken["pid"] == worker  # the same process trained both, one after the other
    assert board.view(second.job_id).snapshot.phase == DONE
    assert json.loads((board.view(second.job_id).path / STATUS).read_text())["pid"] == worker
    # Its start counted from the claim: TensorFlow was running already.
    assert worker_start_seconds(tmp_path) < 1.0
    # The worker logs the job's end after publishing it (and after recording it for the Room): wait for the line.
    log = board.view(second.job_id).path / "worker.log"
    wait_until(lambda: f"job {second.job_id} ended" in log.read_text(), seconds=30)


def test_a_worker_killed_in_the_job_it_took_next_fails_that_job_with_the_signal(tmp_path, demo_folder):
    import os
    import signal

    board = Board(tmp_path, max_concurrent=1)
    first = board.submit([tiny(demo_folder, seed=5)], ["a"], owner="alice")
    long = Experiment(DataConfig(source=f"folder:{demo_folder}", image_size=48, batch_size=16, limit=32, seed=6),
                      TrainConfig(model=ModelKind.BASELINE, epochs=400), 60.0)
    second = board.submit([long], ["b"], owner="bob")
    worker = None

    def second_taken() -> bool:
        nonlocal worker
        board.pump()
        launch = board.view(second.job_id).path / LAUNCH
        worker = json.loads(launch.read_text()).get("pid") if launch.exists() else None
        return worker is not None

    wait_until(second_taken, seconds=240, every=0.05)
    assert worker == json.loads((board.view(first.job_id).path / LAUNCH).read_text())["pid"]
    os.kill(worker, signal.SIGKILL)  # as the system does when memory runs out

    def ended() -> bool:
        board.pump()
        return board.view(second.job_id).finished

    wait_until(ended, seconds=60)
    message = board.view(second.job_id).snapshot.message
    assert "killed by SIGKILL" in message and "memory runs out" in message, message
    assert board.view(first.job_id).snapshot.phase == DONE
