"""Background training jobs: progress snapshots, ETA, stop, failures, and a real run stopped mid-way."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from core.settings.config import DataConfig, ModelKind, TrainConfig, total_epochs
from core.settings.errors import DataError, StopRequested
from core.training.experiment import BatchReport, EpochReport
from core.training.jobs import DONE, FAILED, STOPPED, TRAINING, Experiment, Job, Snapshot

DATA = DataConfig(source="folder:unused", image_size=32, batch_size=4)


def experiment(kind=ModelKind.BASELINE, epochs=2, estimated=None) -> Experiment:
    return Experiment(DATA, TrainConfig(model=kind, epochs=epochs), estimated)


def metrics(epoch: int) -> dict:
    return {"loss": 1 / epoch, "accuracy": 0.5 + epoch / 10, "val_loss": 1.1 / epoch, "val_accuracy": 0.5}


class ScriptedRunner:
    """Stands in for run_experiment: reports batches and epochs, pausing where a test needs to look."""

    def __init__(self, steps=3, fail_with=None, honour_stop=True):
        self.steps, self.fail_with, self.honour_stop = steps, fail_with, honour_stop
        self.calls: list[TrainConfig] = []
        self.gate = threading.Event()  # set to let a paused runner go on
        self.paused = threading.Event()  # set while the runner waits at the gate
        self.pause_after: tuple[int, int] | None = None  # (epoch, step)

    def __call__(self, data, train, runs_dir, callbacks):
        self.calls.append(train)
        if self.fail_with:
            raise self.fail_with
        callbacks.on_status("Opening the data ...")
        epochs = total_epochs(train)  # fine-tuning epochs follow the frozen ones in the same fit
        for epoch in range(1, epochs + 1):
            for step in range(1, self.steps + 1):
                callbacks.on_batch(BatchReport(epoch, epochs, step, self.steps, 0.5 * step))
                if self.pause_after == (epoch, step):
                    self.paused.set()
                    assert self.gate.wait(10)
                if self.honour_stop and callbacks.should_stop():
                    if epoch == 1:
                        raise StopRequested()
                    return self._saved(runs_dir, train)
            callbacks.on_epoch(EpochReport(epoch, epochs, metrics(epoch), 1.5))
        return self._saved(runs_dir, train)

    @staticmethod
    def _saved(runs_dir: Path, train: TrainConfig) -> Path:
        path = Path(runs_dir) / f"run-{train.model.value}-{time.monotonic_ns()}"
        path.mkdir(parents=True)
        return path


def test_a_job_runs_its_experiments_in_order_and_collects_histories(tmp_path):
    runner = ScriptedRunner()
    job = Job([experiment(ModelKind.BASELINE, 2), experiment(ModelKind.TRANSFER, 3)], tmp_path, runner)
    assert job.snapshot().phase == "queued" and job.snapshot().fraction == 0
    assert job.start().join(10)
    snap = job.snapshot()
    assert snap.phase == DONE and snap.finished and snap.error is None
    assert [t.model for t in runner.calls] == [ModelKind.BASELINE, ModelKind.TRANSFER]
    assert [k for k, _ in snap.histories] == [ModelKind.BASELINE, ModelKind.TRANSFER]
    assert [len(h) for _, h in snap.histories] == [2, 3]
    assert snap.histories[0][1][1]["accuracy"] == pytest.approx(0.7)
    assert len(snap.run_dirs) == 2 and all(p.is_dir() for p in snap.run_dirs)
    assert len(job.run_seconds) == 2 and all(0 < s < snap.elapsed_seconds for s in job.run_seconds)
    assert snap.fraction == 1.0 and snap.eta_seconds is None
    assert snap.message == "Finished: 2 run(s) saved."


def test_progress_and_eta_mid_epoch(tmp_path):
    runner = ScriptedRunner(steps=4)
    runner.pause_after = (2, 2)  # epoch 1 done (1.5 s), half of epoch 2 done at 0.5 s a batch
    job = Job([experiment(epochs=3), experiment(ModelKind.TRANSFER, 1, estimated=20.0)], tmp_path, runner).start()
    assert runner.paused.wait(10)
    snap = job.snapshot()
    assert snap.phase == TRAINING and snap.model is ModelKind.BASELINE
    assert (snap.epoch, snap.epochs, snap.step, snap.steps) == (1, 3, 2, 4)
    assert snap.fraction == pytest.approx((1 + 2 / 4) / 3 / 2)
    # Rest of this epoch at 0.5 s a batch, one more epoch like the finished one, then the queued estimate.
    assert snap.eta_seconds == pytest.approx(2 * 0.5 + 1 * 1.5 + 20.0)
    assert "Epoch 2 of 3: batch 2/4" in snap.message
    runner.gate.set()
    assert job.join(10)


def test_fine_tuning_epochs_are_marked_live_and_timed_apart_from_the_frozen_ones(tmp_path):
    runner = ScriptedRunner(steps=4)
    runner.pause_after = (2, 2)  # frozen epoch 1 done (1.5 s), half of frozen epoch 2 done
    train = TrainConfig(model=ModelKind.TRANSFER, epochs=2, fine_tune_epochs=2)
    job = Job([Experiment(DATA, train, 30.0, fine_tune_seconds=20.0)], tmp_path, runner).start()
    assert runner.paused.wait(10)
    snap = job.snapshot()
    assert (snap.epoch, snap.epochs) == (1, 4)
    # The rest of this frozen epoch, then the estimate for fine-tuning: fast frozen epochs say nothing of it.
    assert snap.eta_seconds == pytest.approx(2 * 0.5 + 20.0)
    runner.gate.set()
    assert job.join(10)
    assert [row["phase"] for row in job.snapshot().histories[0][1]] == ["frozen", "frozen", "fine-tune", "fine-tune"]


def test_stop_before_the_first_epoch_saves_nothing_and_skips_the_rest(tmp_path):
    runner = ScriptedRunner()
    runner.pause_after = (1, 1)
    job = Job([experiment(), experiment(ModelKind.TRANSFER)], tmp_path, runner).start()
    assert runner.paused.wait(10)
    job.stop()
    assert job.stop_requested and job.snapshot().message.startswith("Stopping")
    runner.gate.set()
    assert job.join(10)
    snap = job.snapshot()
    assert snap.phase == STOPPED and snap.run_dirs == ()
    assert len(runner.calls) == 1
    assert "nothing was saved" in snap.message


def test_stop_after_an_epoch_keeps_the_saved_run(tmp_path):
    runner = ScriptedRunner()
    runner.pause_after = (2, 1)
    job = Job([experiment(epochs=5)], tmp_path, runner).start()
    assert runner.paused.wait(10)
    job.stop()
    runner.gate.set()
    assert job.join(10)
    snap = job.snapshot()
    assert snap.phase == STOPPED and len(snap.run_dirs) == 1
    assert snap.message.startswith("Stopped after 1 epoch(s)")


def test_a_lab_error_ends_the_job_with_its_message(tmp_path):
    runner = ScriptedRunner(fail_with=DataError("'x' has no readable images for the train split."))
    job = Job([experiment(), experiment()], tmp_path, runner).start()
    assert job.join(10)
    snap = job.snapshot()
    assert snap.phase == FAILED and snap.error == "'x' has no readable images for the train split."
    assert len(runner.calls) == 1


def test_an_unexpected_error_is_reported_not_swallowed(tmp_path):
    job = Job([experiment()], tmp_path, ScriptedRunner(fail_with=ZeroDivisionError("division by zero"))).start()
    assert job.join(10)
    snap = job.snapshot()
    assert snap.phase == FAILED
    assert "ZeroDivisionError: division by zero" in snap.error and "server log" in snap.error


def test_a_job_needs_an_experiment(tmp_path):
    with pytest.raises(ValueError):
        Job([], tmp_path)


def test_a_real_run_stops_after_its_first_epoch_and_is_saved_as_stopped_early(tmp_path, demo_folder):
    data = DataConfig(source=f"folder:{demo_folder}", image_size=48, batch_size=16, limit=32)
    job = Job([Experiment(data, TrainConfig(model=ModelKind.BASELINE, epochs=500))], tmp_path).start()
    deadline = time.monotonic() + 120
    while job.snapshot().epoch < 1 and not job.snapshot().finished:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job.stop()
    assert job.join(120)
    snap = job.snapshot()
    assert snap.phase == STOPPED, snap.message
    run = snap.run_dirs[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_early"] is True
    assert 1 <= metrics["epochs_completed"] < 500
    assert len(json.loads((run / "history.json").read_text())) == metrics["epochs_completed"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".incomplete-")]


def test_a_snapshot_survives_its_json_form(tmp_path):
    runner = ScriptedRunner()
    job = Job([experiment(ModelKind.BASELINE, 2), experiment(ModelKind.TRANSFER, 1)], tmp_path, runner).start()
    assert job.join(10)
    snap = job.snapshot()
    assert Snapshot.from_dict(json.loads(json.dumps(snap.to_dict()))) == snap
