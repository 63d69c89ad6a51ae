"""The job board: a FIFO queue over worker processes, reuse of identical experiments, contained crashes.

The queue tests launch stand-in workers (`sleep`) so that they need no TensorFlow; the last tests start
real worker processes that train on the demo folder.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from core.settings.config import DataConfig, ModelKind, TrainConfig
from core.settings.processes import WORKER_NICENESS
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

DATA = DataConfig(source="folder:unused", image_size=32, batch_size=4)


def experiment(kind=ModelKind.BASELINE, epochs=2, estimated=10.0) -> Experiment:
    return Experiment(DATA, TrainConfig(model=kind, epochs=epochs), estimated)


class SleepingWorkers:
    """Stands in for worker processes: each launch is a `sleep` the test can end or kill."""

    def __init__(self):
        self.started: list[Path] = []
        self.processes: list[subprocess.Popen] = []
        self.closed = False

    def __call__(self, job_dir: Path) -> subprocess.Popen:
        if self.closed:  # a watcher starting the next queued job after the test: nothing outlives the test
            raise OSError("the test is over")
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
        self.closed = True
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
    second = board.submit([experiment(estimated=20.0), experiment(ModelKind.TRANSFER, estimated=5.0)],
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


def test_a_servers_pages_share_one_read_of_the_board_and_see_their_own_changes_at_once(tmp_path, workers,
                                                                                      monkeypatch):
    import core.training.board as board_module

    reads = []
    real = Board._view
    monkeypatch.setattr(Board, "_view", lambda self, path, *a, **k: reads.append(path) or real(self, path, *a, **k))
    page = lambda: Board(tmp_path, max_concurrent=1, launcher=workers, shared_reads_seconds=60.0)
    first = page().submit([experiment()], ["a"], owner="alice")
    queued = page().submit([experiment()], ["b"], owner="bob")
    reads.clear()
    assert page().view(queued.job_id).queue_position == 1  # what a page submits, it sees on its next read
    for _ in range(30):  # a room of pages polling: the files are read once
        assert [v.job_id for v in page().active()] == [first.job_id, queued.job_id]
    assert len([r for r in reads if tmp_path in r.parents]) == 2  # (other tests' watcher threads read too)
    page().stop(queued.job_id)  # a change made here is seen at once
    assert page().view(queued.job_id).snapshot.phase == STOPPED
    # A worker's change (another process) is seen once the shared read is older than its limit.
    running = page().view(first.job_id)
    _publish(running.path, replace(running.snapshot, phase="training", epoch=1))
    assert page().view(first.job_id).snapshot.epoch == 0
    monkeypatch.setattr(board_module.time, "monotonic", lambda real=time.monotonic: real() + 61.0)
    assert page().view(first.job_id).snapshot.epoch == 1
    assert Board(tmp_path, launcher=workers).view(first.job_id).snapshot.epoch == 1  # unshared: always the files


def test_pages_due_together_wait_for_one_read_of_the_board(tmp_path, workers, monkeypatch):
    import threading

    reads, entered, release = [], threading.Event(), threading.Event()
    real = Board._read_views

    def slow_read(self, active_only=False):  # the first read holds until every page has asked
        reads.append(active_only)
        entered.set()
        release.wait(5)
        return real(self, active_only)

    Board(tmp_path, max_concurrent=1, launcher=workers).submit([experiment()], ["a"], owner="alice")
    monkeypatch.setattr(Board, "_read_views", slow_read)
    seen = []
    pages = [threading.Thread(target=lambda: seen.append(len(Board(tmp_path, max_concurrent=1, launcher=workers,
                                                                     shared_reads_seconds=60.0).active())))
             for _ in range(8)]
    pages[0].start()
    assert entered.wait(5)
    for page in pages[1:]:
        page.start()
    time.sleep(0.2)
    release.set()
    for page in pages:
        page.join(5)
    assert seen == [1] * 8 and reads == [True]


def test_an_ended_job_is_read_from_its_files_once_and_its_late_joiners_are_seen(tmp_path, workers, monkeypatch):
    import core.training.board as board_module

    board = Board(tmp_path, max_concurrent=1, launcher=workers)
    done = board.submit([experiment()], ["a"], owner="alice")
    running = board.submit([experiment()], ["b"], owner="bob")
    workers.finish(board, board.view(done.job_id).path, run_dirs=[tmp_path / "run-a"])
    board.pump()
    assert board.view(done.job_id).finished and board.view(running.job_id).snapshot.phase != "queued"
    opened = []
    real = board_module.read_json
    monkeypatch.setattr(board_module, "read_json",
                        lambda path, *a, **k: opened.append(Path(path).parent.name) or real(path, *a, **k))
    for _ in range(5):  # pages polling: the ended job's files are not opened again, the running one's are
        assert [v.job_id for v in board.views()] == [done.job_id, running.job_id]
        assert board.view(done.job_id).joiners == ()
    assert done.job_id not in opened and running.job_id in opened
    # A session handed the ended job's run later joins it: the kept view gives way to the files.
    board_module._add_joiner(board.view(done.job_id).path, "carol")
    assert board.view(done.job_id).joiners == ("carol",)
    assert done.job_id in opened


def test_a_jobs_title_estimates_and_place_are_made_from_its_spec_once(tmp_path, workers, monkeypatch):
    import core.training.board as board_module

    made = []
    real = board_module._experiments_from_spec
    monkeypatch.setattr(board_module, "_experiments_from_spec", lambda spec: made.append(1) or real(spec))
    titles = []
    real_title = board_module._title
    monkeypatch.setattr(board_module, "_title", lambda spec: titles.append(1) or real_title(spec))
    board = Board(tmp_path, max_concurrent=1, launcher=workers)
    jobs = [board.submit([experiment()], [name], owner=name).job_id for name in "abc"]
    made.clear()
    titles.clear()
    for _ in range(5):  # a queue polled by a room: the two waiting jobs' places and waits as ever
        views = {v.job_id: v for v in board.views()}
        assert [views[j].queue_position for j in jobs] == [None, 1, 2]
        assert [views[j].title for j in jobs] == ["Baseline CNN"] * 3
    assert len(titles) == 0 and len(made) == 0  # all made when the jobs were submitted


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
    first = board.submit([experiment(), experiment(ModelKind.TRANSFER)], ["base", "transfer"], owner="alice")
    again = board.submit([experiment(), experiment(ModelKind.TRANSFER)], ["base", "transfer"], owner="bob")
    assert again.attached and again.job_id == first.job_id
    assert len(workers.started) == 1 and len(board.views()) == 1
    # Once it has finished, the same experiments are not trained again: the runs are handed back.
    runs = (trained_runs["baseline"], trained_runs["mobilenet_v2"])
    workers.finish(board, board.view(first.job_id).path, run_dirs=runs)
    later = board.submit([experiment(), experiment(ModelKind.TRANSFER)], ["base", "transfer"], owner="carol")
    assert later.job_id is None and later.reused == {0: runs[0], 1: runs[1]}
    # Half the same: only the new experiment is queued.
    mixed = board.submit([experiment(), experiment(ModelKind.TRANSFER, epochs=9)], ["base", "other"], owner="dan")
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


# -- damaged files, full and read-only disks, and one session's share of the queue -------------------------

class FilledDisk:
    """A disk that is full while `full` is set: every write of bytes fails with ENOSPC, and 12 MB are free."""

    def __init__(self, monkeypatch):
        self.full = False
        real_write, real_write_text = os.write, Path.write_text

        def write(fd, data):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        def write_text(path, *args, **kwargs):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write_text(path, *args, **kwargs)

        usage = shutil.disk_usage

        def disk_usage(path):
            return usage(path)._replace(free=12_000_000) if self.full else usage(path)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(Path, "write_text", write_text)
        monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def _bad_job(root: Path, name: str, spec: str | None = None, **files: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    if spec is not None:
        (path / "spec.json").write_text(spec)
    for file_name, text in files.items():
        (path / file_name.replace("_", ".")).write_text(text)
    return path


def test_board_views_survive_damaged_and_deeply_nested_job_files(tmp_path, workers):
    board = Board(tmp_path, max_concurrent=2, launcher=workers)
    job = board.submit([experiment()], ["a"], owner="alice")
    root = jobs_root(tmp_path)
    good_spec = (root / job.job_id / "spec.json").read_text()
    _bad_job(root, "20000101-000000-deep01", "[" * 100_000)
    _bad_job(root, "20000101-000000-none02", json.dumps({"experiments": []}))
    _bad_job(root, "20000101-000000-when03", json.dumps({**json.loads(good_spec), "created": "soon"}))
    _bad_job(root, "20000101-000000-data04", json.dumps({"experiments": [{"data": 5, "train": []}]}))
    # A job whose own spec is sound shows, whatever its status and launch files hold.
    shown = _bad_job(root, "20000101-000000-stat05", good_spec, status_json="{" * 100_000,
                     launch_json=json.dumps({"pid": None, "at": "yesterday"}))
    _bad_job(root, "20000101-000000-type06", good_spec, launch_json=json.dumps({"pid": 2**62, "at": 0}),
             status_json=json.dumps({"phase": "training", "fraction": "most", "eta_seconds": [1]}))
    views = board.views()
    assert {v.job_id for v in views} >= {job.job_id, shown.name}
    assert not {v.job_id for v in views} & {"20000101-000000-deep01", "20000101-000000-none02",
                                             "20000101-000000-when03", "20000101-000000-data04"}
    assert all(isinstance(v.snapshot.fraction, float | int) for v in views)
    board.pump()  # the job whose launch names no process is failed, not a crash
    assert board.view("20000101-000000-type06").snapshot.phase == FAILED
    assert board.view(job.job_id).active


def test_a_huge_job_file_is_not_read(tmp_path, workers):
    import tracemalloc

    board = Board(tmp_path, max_concurrent=1, launcher=workers)
    job = board.submit([experiment()], ["a"], owner="alice")
    with open(board.view(job.job_id).path / STATUS, "wb") as fh:
        fh.truncate(64 * 1024**2)  # sparse: 64 MB of zero bytes
    tracemalloc.start()
    try:
        view = board.view(job.job_id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert view is not None and view.active
    assert peak < 16 * 1024**2


def test_a_damaged_timings_file_is_refused_quickly_and_replaced_by_the_next_record(tmp_path, monkeypatch):
    import tracemalloc

    from core.training import estimate

    path = jobs_root(tmp_path) / TIMINGS_FILE
    path.parent.mkdir(parents=True)
    path.write_text("[" * 100_000)
    assert estimate.observed_timing(path.parent, DATA, TrainConfig()) is None
    with open(path, "wb") as fh:
        fh.truncate(150 * 1000**2)
    tracemalloc.start()
    try:
        assert estimate.observed_timing(path.parent, DATA, TrainConfig()) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024**2
    seen = {"fixed": 3.0, "first_epoch": 0.01, "epoch": 0.01, "features": None, "in_memory": True, "at": 1.0}
    monkeypatch.setattr(estimate, "observation", lambda run_dir, seconds: dict(seen))
    estimate.record_timing(path.parent, DATA, TrainConfig(), tmp_path, 10.0)
    assert estimate.observed_timing(path.parent, DATA, TrainConfig()).runs == 1


def _record_timings(folder: str, prefix: str, count: int) -> None:
    from core.training import estimate

    for n in range(count):
        estimate.record_timing(folder, replace(DATA, source=f"folder:{prefix}{n}"), TrainConfig(), folder, 10.0)


def test_timings_recorded_by_two_processes_at_once_are_all_kept(tmp_path, monkeypatch):
    import multiprocessing

    from core.training import estimate

    seen = {"fixed": 3.0, "first_epoch": 0.01, "epoch": 0.01, "features": None, "in_memory": True, "at": 1.0}
    monkeypatch.setattr(estimate, "observation", lambda run_dir, seconds: dict(seen))  # inherited by the forks
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_record_timings, args=(str(tmp_path), prefix, 30)) for prefix in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    assert len(json.loads((tmp_path / TIMINGS_FILE).read_text())) == 60


def test_submitting_on_a_full_disk_says_so_in_one_line_and_leaves_no_half_made_job(tmp_path, workers, monkeypatch):
    from core.settings.errors import LabError

    board = Board(tmp_path, max_concurrent=1, launcher=workers)
    board.submit([experiment()], ["a"], owner="alice")
    disk = FilledDisk(monkeypatch)
    disk.full = True
    with pytest.raises(LabError) as refused:
        board.submit([experiment()], ["b"], owner="bob")
    assert str(refused.value) == ("The training could not be queued: the disk is full (12 MB free in the runs "
                                  "folder); free space there, then try again.")
    assert not [p.name for p in board.root.iterdir() if p.name.startswith(".new-")]
    assert len(board.views()) == 1 and board.pump_if_due(every_seconds=0)  # pages go on reading and pumping
    disk.full = False
    assert board.submit([experiment()], ["b"], owner="bob").job_id is not None


def test_a_read_only_runs_folder_refuses_in_one_line_and_pages_still_read(tmp_path, workers, monkeypatch):
    from core.settings.errors import LabError

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    board = Board(tmp_path / "runs", max_concurrent=1, launcher=workers)
    monkeypatch.setattr(Path, "mkdir", read_only)  # root ignores chmod: the folder cannot be made, as when read-only
    with pytest.raises(LabError, match=r"^The job board cannot be changed: the runs folder is read-only "
                                       r"\(Read-only file system\); make it writable or set LAB_RUNS_DIR"):
        board.submit([experiment()], ["a"], owner="alice")
    assert board.views() == [] and board.pump_if_due(every_seconds=0)
    monkeypatch.undo()

    job = board.submit([experiment()], ["a"], owner="alice")
    real_open = os.open

    def open_read_only(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_read_only)
    with pytest.raises(LabError, match="^The job board cannot be changed: the runs folder is read-only"):
        board.submit([experiment()], ["b"], owner="bob")
    with pytest.raises(LabError, match="^The job board cannot be changed"):
        board.stop(job.job_id)
    assert board.pump_if_due(every_seconds=0)
    assert [v.job_id for v in board.views()] == [job.job_id]


def test_a_worker_that_ended_on_a_full_disk_is_failed_once_there_is_space(tmp_path, monkeypatch):
    from core.training import board as board_module
    from core.training.board import EXIT_DISK_FULL, exit_reason

    monkeypatch.setattr(board_module, "EXIT_RETRY_SECONDS", 0.05)
    go = tmp_path / "go"
    launched = []

    def launch(_job_dir):
        script = f"import os, sys, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)\nsys.exit({EXIT_DISK_FULL})"
        launched.append(subprocess.Popen([sys.executable, "-c", script]))
        return launched[-1]

    board = Board(tmp_path / "runs", max_concurrent=1, launcher=launch)
    job = board.submit([experiment()], ["a"], owner="alice")
    path = board.view(job.job_id).path
    disk = FilledDisk(monkeypatch)
    disk.full = True
    os.close(os.open(go, os.O_CREAT | os.O_WRONLY))
    assert launched[0].wait(30) == EXIT_DISK_FULL
    time.sleep(0.3)  # the watcher tries to record the end, and cannot
    assert not (path / EXIT).exists()
    assert board.pump_if_due(every_seconds=0)  # a page's refresh: no error while the disk is full
    assert board.view(job.job_id).active
    disk.full = False
    wait_until(lambda: board.view(job.job_id).finished)
    view = board.view(job.job_id)
    assert view.snapshot.phase == FAILED and view.snapshot.message == exit_reason(EXIT_DISK_FULL)
    assert "the disk was full" in view.snapshot.message
    assert json.loads((path / EXIT).read_text())["returncode"] == EXIT_DISK_FULL


def test_a_worker_ends_with_the_disk_full_code_when_it_cannot_publish(tmp_path, monkeypatch):
    from core.training import worker
    from core.training.board import EXIT_DISK_FULL

    board = Board(tmp_path, max_concurrent=1, launcher=lambda job_dir: None)
    with board._locked():
        job_dir = board.root / board._create([experiment()], ["a"], "alice", "dashboard")
    monkeypatch.setattr(worker, "yield_cpu", lambda: None)  # the test's own process keeps its priority
    monkeypatch.setattr(worker, "follow_training", raiser_of(OSError(errno.ENOSPC, "No space left on device")))
    disk = FilledDisk(monkeypatch)
    disk.full = True
    assert worker.main([str(job_dir)]) == EXIT_DISK_FULL
    assert not (job_dir / STATUS).exists()
    disk.full = False  # space again as it failed: the job says why itself
    assert worker.main([str(job_dir)]) == 1
    status = json.loads((job_dir / STATUS).read_text())
    assert status["phase"] == FAILED and status["message"].startswith("Training failed: the disk is full (")


def raiser_of(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


def test_training_goes_on_while_its_progress_cannot_be_published(tmp_path, monkeypatch):
    import threading

    from core.training.board import follow_training
    from core.training.jobs import Job

    gate = threading.Event()

    def runner(data, train, runs_dir, callbacks):
        callbacks.on_status("Opening the data ...")
        assert gate.wait(30)
        run = Path(runs_dir) / "run"
        run.mkdir()
        return run

    job_dir = tmp_path / ".jobs" / "job"
    job_dir.mkdir(parents=True)
    disk = FilledDisk(monkeypatch)
    disk.full = True
    ended = {}
    follower = threading.Thread(target=lambda: ended.update(snapshot=follow_training(job, job_dir, poll_seconds=0.01)))
    job = Job([experiment()], tmp_path, runner)
    follower.start()
    time.sleep(0.3)  # many publishes refused meanwhile
    assert follower.is_alive() and not (job_dir / STATUS).exists()
    disk.full = False
    gate.set()
    follower.join(30)
    assert ended["snapshot"].phase == DONE
    assert json.loads((job_dir / STATUS).read_text())["phase"] == DONE


def test_one_session_holds_at_most_its_share_of_the_queue_and_joining_costs_nothing(tmp_path, workers):
    from core.settings.errors import LabError

    board = Board(tmp_path, max_concurrent=1, launcher=workers, max_per_session=1)
    first = board.submit([experiment()], ["a"], owner="alice")
    with pytest.raises(LabError) as refused:
        board.submit([experiment()], ["b"], owner="alice")
    assert str(refused.value) == "You already have a training queued or running; wait for it to finish or stop it."
    assert len(board.views()) == 1
    assert board.submit([experiment()], ["b"], owner="bob").job_id is not None  # another session's own
    joined = board.submit([experiment()], ["a"], owner="carol")  # the same as alice's: joined, not held
    assert joined.attached and joined.job_id == first.job_id
    assert board.submit([experiment()], ["c"], owner="carol").job_id is not None
    # Once alice's training has ended, she may queue another.
    workers.finish(board, board.view(first.job_id).path)
    assert board.submit([experiment()], ["d"], owner="alice").job_id is not None


def test_the_share_of_a_session_comes_from_the_preset(tmp_path, monkeypatch, workers):
    from core.settings.errors import LabError

    monkeypatch.setenv("LAB_PRESET", "cloud")
    assert Board(tmp_path).max_per_session == 1
    monkeypatch.setenv("LAB_PRESET", "local")
    board = Board(tmp_path, max_concurrent=1, launcher=workers)
    assert board.max_per_session == 4
    for n in range(4):
        board.submit([experiment()], [f"f{n}"], owner="alice")
    with pytest.raises(LabError, match="^You already have 4 trainings queued or running, the most one session may "
                                       "have; wait for one to finish or stop it.$"):
        board.submit([experiment()], ["f5"], owner="alice")


def test_the_room_names_everyone_who_asked_for_a_training_that_ran_once(tmp_path, workers, trained_runs):
    """Joining an identical job, or being handed its finished run, puts the run in the room under the
    joiner's name as well; the owner and a repeated join count once."""
    from core.runs import room
    from core.training.board import read_joiners

    board = Board(tmp_path, max_concurrent=1, launcher=workers)
    first = board.submit([experiment()], ["base"], owner="alice")
    for owner in ("bob", "bob", "alice"):
        assert board.submit([experiment()], ["base"], owner=owner).attached
    job = board.view(first.job_id)
    assert read_joiners(job.path) == ("bob",) and job.joiners == ()  # read only once it has a run to record
    run = tmp_path / trained_runs["baseline"].name
    shutil.copytree(trained_runs["baseline"], run)
    workers.finish(board, job.path, run_dirs=(run,))
    view = board.view(first.job_id)
    assert view.joiners == ("bob",)
    room.record_running(tmp_path, [view])  # as the Room page does; the worker records the same at the end
    assert {(e.owner, e.run_id) for e in room.entries(tmp_path)} == {
        (room.owner_key("alice"), run.name), (room.owner_key("bob"), run.name)}
    later = board.submit([experiment()], ["base"], owner="carol")
    assert later.job_id is None and later.reused == {0: run}
    assert sorted(e.owner for e in room.entries(tmp_path)) == sorted(
        room.owner_key(o) for o in ("alice", "bob", "carol"))
    assert [r.name for r in room.rows(tmp_path)].count(room.default_name(room.owner_key("carol"))) == 1
