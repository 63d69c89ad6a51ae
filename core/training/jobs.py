"""The training engine of one job: experiments run in order on a thread, followed through Snapshots.

A Job runs one or more experiments one after another (the Experiments page's "Run both") through
core.training.experiment.run_experiment. The training thread writes progress under a lock and readers get frozen
Snapshots, so nobody sees half an update; stop() sets an Event that training polls after every batch.
A Job lives inside the process that trains it: a worker process started by core.training.board, or the
CLI. The board publishes its Snapshots as JSON for every page, tab and browser to read.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from core.settings.config import DataConfig, ModelKind, TrainConfig, total_epochs
from core.settings.errors import LabError, StopRequested, error_line
from core.settings.specs import spec
from core.settings.text import FINE_TUNE_PHASE, FROZEN_PHASE, TRAIN_PHASE
from core.training.experiment import BatchReport, Callbacks, EpochReport

logger = logging.getLogger(__name__)

QUEUED, PREPARING, FEATURES, TRAINING, SAVING = "queued", "preparing", "features", "training", "saving"
DONE, STOPPED, FAILED = "done", "stopped", "failed"
FINISHED = (DONE, STOPPED, FAILED)


@dataclass(frozen=True)
class Experiment:
    data: DataConfig
    train: TrainConfig
    estimated_seconds: float | None = None  # from core.training.estimate; the ETA falls back on it before epoch 1
    # The estimate's share for fine-tuning epochs: while the fast frozen epochs run, nothing measured yet
    # says how long the slow unfrozen ones will take.
    fine_tune_seconds: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of a job's progress at one moment."""
    phase: str
    message: str
    index: int  # the experiment running now (0-based)
    total: int
    model: ModelKind | None
    epoch: int  # epochs finished in the current experiment
    epochs: int
    step: int  # batches finished in the current epoch
    steps: int
    histories: tuple[tuple[ModelKind, tuple[dict, ...]], ...]  # one per experiment started so far
    run_dirs: tuple[Path, ...]
    eta_seconds: float | None
    elapsed_seconds: float
    fraction: float  # 0..1 over the whole job
    error: str | None

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    def to_dict(self) -> dict:
        """Plain JSON values, for the job board's status file."""
        out = asdict(self)
        out["model"] = self.model.value if self.model else None
        out["histories"] = [[kind.value, list(rows)] for kind, rows in self.histories]
        out["run_dirs"] = [str(p) for p in self.run_dirs]
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Snapshot:
        values = {f.name: d.get(f.name) for f in fields(cls)}
        values["model"] = ModelKind(d["model"]) if d.get("model") else None
        values["histories"] = tuple((ModelKind(kind), tuple(rows)) for kind, rows in d.get("histories") or ())
        values["run_dirs"] = tuple(Path(p) for p in d.get("run_dirs") or ())
        return cls(**values)


@dataclass
class _State:
    phase: str = QUEUED
    message: str = "Waiting to start ..."
    index: int = 0
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    seconds_in_epoch: float = 0.0
    histories: list = field(default_factory=list)
    run_dirs: list = field(default_factory=list)
    error: str | None = None
    experiment_started: float = 0.0


# Returns the run folder it saved; None for work that saves no run (a data efficiency measurement).
Runner = Callable[[DataConfig, TrainConfig, Path, Callbacks], Path | None]

def _default_runner(data: DataConfig, train: TrainConfig, runs_dir: Path, callbacks: Callbacks) -> Path:
    from core.training.experiment import run_experiment

    return run_experiment(data, train, runs_dir, callbacks)


class Job:
    """One or more experiments trained in order on a daemon thread."""

    def __init__(self, experiments: list[Experiment], runs_dir: str | Path, runner: Runner | None = None):
        if not experiments:
            raise ValueError("a job needs at least one experiment")
        self.experiments = list(experiments)
        self.runs_dir = Path(runs_dir)
        self._runner = runner or _default_runner
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = _State()
        self._started = 0.0
        self._ended: float | None = None
        self.exception: BaseException | None = None  # what ended the job, for callers that re-raise
        # Wall seconds of each saved run, from opening its data to its evaluation (estimates learn from them).
        self.run_seconds: list[float] = []
        self._thread = threading.Thread(target=self._run, name="lab-training", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> Job:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask training to stop after the current batch; finished epochs are still saved."""
        self._stop.set()
        with self._lock:
            if self._state.phase not in FINISHED:
                self._state.message = "Stopping after the current batch ..."

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> Snapshot:
        with self._lock:
            s = replace(self._state, histories=[list(h) for h in self._state.histories],
                        run_dirs=list(self._state.run_dirs))
            ended = self._ended
        now = ended if ended is not None else time.monotonic()
        current = self.experiments[min(s.index, len(self.experiments) - 1)]
        model = current.train.model if s.phase != QUEUED else None
        kinds = [e.train.model for e in self.experiments]
        return Snapshot(
            phase=s.phase, message=s.message, index=s.index, total=len(self.experiments), model=model,
            epoch=s.epoch, epochs=s.epochs or total_epochs(current.train), step=s.step, steps=s.steps,
            histories=tuple((kinds[i], tuple(h)) for i, h in enumerate(s.histories)),
            run_dirs=tuple(s.run_dirs), eta_seconds=None if s.phase in FINISHED else self._eta(s, now),
            elapsed_seconds=(now - self._started) if self._started else 0.0,
            fraction=1.0 if s.phase == DONE else self._fraction(s, now), error=s.error,
        )

    def _experiment_fraction(self, s: _State, now: float) -> float:
        if s.phase == SAVING:
            return 1.0
        if s.epochs and (s.epoch or s.step):
            return min(1.0, (s.epoch + (s.step / s.steps if s.steps else 0)) / s.epochs)
        estimated = self.experiments[s.index].estimated_seconds
        if estimated and s.experiment_started:
            # Before the first batch (opening data, computing features) only the estimate says how far along.
            return min(0.3, (now - s.experiment_started) / estimated)
        return 0.0

    def _fraction(self, s: _State, now: float) -> float:
        if s.index >= len(self.experiments):
            return 1.0
        return (s.index + self._experiment_fraction(s, now)) / len(self.experiments)

    def _eta(self, s: _State, now: float) -> float | None:
        if s.index >= len(self.experiments):
            return 0.0
        queued = self.experiments[s.index + 1:]
        later = sum(e.estimated_seconds or 0.0 for e in queued)
        if any(e.estimated_seconds is None for e in queued):
            later = None
        current: float | None = None
        history = s.histories[s.index] if s.index < len(s.histories) else []
        if s.phase == TRAINING and s.steps and (s.step or history):
            current = self._training_left(s, history, self.experiments[s.index])
        elif s.phase == SAVING:
            current = 0.0
        else:
            estimated = self.experiments[s.index].estimated_seconds
            if estimated is not None and s.experiment_started:
                current = max(0.0, estimated - (now - s.experiment_started))
        if current is None or later is None:
            return None
        return current + later

    @staticmethod
    def _training_left(s: _State, history: list, experiment: Experiment) -> float | None:
        """Seconds left in the current experiment's epochs, each phase timed by its own epochs: frozen
        epochs on cached features take a fraction of what fine-tuning epochs take."""
        train = experiment.train
        frozen = train.resolved_epochs if total_epochs(train) > train.resolved_epochs else s.epochs
        fine_tuning = s.epoch >= frozen  # the epoch in progress is a fine-tuning one
        rows = history[frozen:] if fine_tuning else history[:frozen]
        # The phase's latest epoch, not the mean: the first one also decodes images that later epochs
        # read from memory, so it overstates what is left.
        if rows:
            per_epoch = rows[-1].get("seconds", 0.0)
        elif s.step:
            per_epoch = s.seconds_in_epoch / s.step * s.steps
        else:
            return experiment.fine_tune_seconds if fine_tuning else None
        in_epoch = (s.seconds_in_epoch / s.step * (s.steps - s.step)) if s.step else per_epoch
        left = in_epoch + max(0, (s.epochs if fine_tuning else frozen) - s.epoch - 1) * per_epoch
        if not fine_tuning and s.epochs > frozen:
            if experiment.fine_tune_seconds is None:
                return None
            left += experiment.fine_tune_seconds
        return left

    def _update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._state, key, value)

    def _callbacks(self, index: int) -> Callbacks:
        train = self.experiments[index].train

        def on_status(message: str) -> None:
            phase = FEATURES if message.startswith(("Computing backbone features", "Features for")) else None
            with self._lock:
                if self._stop.is_set():
                    return
                self._state.message = message
                if phase:
                    self._state.phase = phase

        def on_batch(report: BatchReport) -> None:
            with self._lock:
                self._state.phase = TRAINING
                self._state.epoch, self._state.epochs = report.epoch - 1, report.epochs
                self._state.step, self._state.steps = report.step, report.steps
                self._state.seconds_in_epoch = report.seconds_in_epoch
                if not self._stop.is_set():
                    self._state.message = f"Epoch {report.epoch} of {report.epochs}: batch {report.step}/{report.steps}"

        def on_epoch(report: EpochReport) -> None:
            # The phase core.training.experiment records in history.json, so live charts mark fine-tuning as saved ones do.
            phase = TRAIN_PHASE if not spec(train.model).has_backbone else (
                FROZEN_PHASE if report.epoch <= train.resolved_epochs else FINE_TUNE_PHASE)
            row = dict(report.metrics, seconds=round(report.seconds, 3), phase=phase)
            with self._lock:
                self._state.histories[index].append(row)
                self._state.epoch, self._state.epochs = report.epoch, report.epochs
                self._state.step = 0
                if report.epoch >= report.epochs:
                    self._state.phase = SAVING
                    self._state.message = "Saving the model and the run folder ..."

        return Callbacks(on_epoch=on_epoch, on_batch=on_batch, on_status=on_status,
                         should_stop=self._stop.is_set)

    def _run(self) -> None:
        final_phase, final_message = DONE, ""
        for index, experiment in enumerate(self.experiments):
            if self._stop.is_set():
                break
            with self._lock:
                self._state.index = index
                self._state.phase, self._state.message = PREPARING, "Opening the data ..."
                self._state.epoch, self._state.step, self._state.steps = 0, 0, 0
                self._state.epochs = total_epochs(experiment.train)
                self._state.histories.append([])
                self._state.experiment_started = time.monotonic()
            try:
                run_dir = self._runner(experiment.data, experiment.train, self.runs_dir, self._callbacks(index))
            except StopRequested as exc:
                self.exception = exc
                final_phase = STOPPED
                final_message = "Stopped before the first epoch finished; nothing was saved for that model."
                break
            except LabError as exc:
                self.exception = exc
                final_phase, final_message = FAILED, str(exc)
                break
            except Exception as exc:  # a bug must end the job visibly, not kill the thread silently
                self.exception = exc
                logger.exception("training job failed")
                final_phase = FAILED
                final_message = (f"Training failed unexpectedly ({error_line(exc, 300)}). "
                                 "The server log has the details.")
                break
            if run_dir is None:
                continue
            with self._lock:
                self._state.run_dirs.append(Path(run_dir))
                self.run_seconds.append(time.monotonic() - self._state.experiment_started)
            if self._stop.is_set():
                epochs_done = len(self._state.histories[index])
                final_phase = STOPPED
                final_message = f"Stopped after {epochs_done} epoch(s); the finished epochs were saved as {Path(run_dir).name}."
                break
        with self._lock:
            if final_phase == DONE:
                self._state.index = len(self.experiments)
                saved = len(self._state.run_dirs)
                final_message = f"Finished: {saved} run(s) saved." if saved else "Finished."
            self._state.phase, self._state.message = final_phase, final_message
            self._state.error = final_message if final_phase == FAILED else None
            self._ended = time.monotonic()
