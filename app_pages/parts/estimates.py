"""The Experiments page's duration estimates: models timed on this machine, shared by every session.

Timing a setting is the same work for every visitor of this server, so its result is shared. It runs in a
child process (core.training.timing) started from a thread of the server, never from a page's script run:
the page is drawn at once, says that the estimate is on its way, and picks it up when it is there, while
a visitor waiting for it holds nothing the others need. core.training.estimate does the arithmetic. Where
runs of a setting finished here already, their recorded costs (read fresh each time: a run may have just
finished) replace the timing.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import streamlit as st

from app_pages.parts.common import open_source_cached, runs_folder
from core.settings.config import DataConfig, ModelKind, TrainConfig, validate
from core.training.estimate import Estimate, Observed, Speed, estimate_run, observed_timing

RETRY_FAILED_SECONDS = 30.0  # a failed timing (offline, a bad handle) is shown, then tried again after this
KEPT_TIMINGS = 64  # settings whose timings are kept, the oldest dropped first


class Pending(Exception):
    """The setting is being timed; its estimate is not there yet."""


class _Timings:
    """Timings by setting, measured one at a time in a thread of the server that only waits on a child."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-timing")
        self._futures: dict[tuple, tuple[Future, list[float]]] = {}  # key -> (timing, [when it ended])

    def future(self, key: tuple) -> Future:
        from core.training import timing
        from core.training.board import jobs_root

        with self._lock:
            found = self._futures.get(key)
            if found is not None:
                future, ended = found
                # Counted from the failure, not the request: a timing that waited in line and failed is
                # shown for a while before it is tried again, however long it waited.
                failed_long_ago = future.done() and (future.cancelled() or future.exception() is not None) \
                    and time.monotonic() - ended[0] > RETRY_FAILED_SECONDS
                if not failed_long_ago:
                    return future
            kind, image_size, batch_size, handle, classes, source, fine_tune = key
            future = self._pool.submit(timing.measure_setting, ModelKind(kind), image_size, batch_size, handle,
                                       classes, source, fine_tune, jobs_root(runs_folder()))
            ended = [float("inf")]
            future.add_done_callback(lambda _f, ended=ended: ended.__setitem__(0, time.monotonic()))
            self._futures[key] = (future, ended)
            while len(self._futures) > KEPT_TIMINGS:
                self._futures.pop(next(iter(self._futures)))
            return future


    def cancel_pending(self) -> None:
        """Forget the timings not finished yet (nobody waits for them any more); finished ones stay shared."""
        with self._lock:
            for key, (future, _) in list(self._futures.items()):
                if not future.done():
                    future.cancel()
                    del self._futures[key]


@st.cache_resource(show_spinner=False)
def _timings() -> _Timings:
    return _Timings()


def _key(kind: ModelKind, data: DataConfig, train: TrainConfig, num_classes: int) -> tuple:
    # Fine-tuning is timed only when asked for: the slowest step there is to time.
    return (kind.value, data.image_size, data.batch_size, train.handle, num_classes, data.source,
            bool(train.fine_tune_epochs))


def available(source: str) -> tuple[int, int, int]:
    """(training images, validation images, classes) of the whole source."""
    info = open_source_cached(source).info
    return info.split_size("train"), info.split_size("validation"), info.num_classes


def speed(kind: ModelKind, data: DataConfig, train: TrainConfig, num_classes: int,
          wait_seconds: float = 0.0) -> Speed:
    """The setting's measured speed; raises Pending while it is still being timed (after waiting up to
    wait_seconds), or the timing's own error."""
    future = _timings().future(_key(kind, data, train, num_classes))
    try:
        return future.result(timeout=wait_seconds)
    except TimeoutError:
        raise Pending from None


def observed(data: DataConfig, train: TrainConfig) -> Observed | None:
    """What the latest finished runs of this setting took on this server, if any finished."""
    from core.training.board import jobs_root

    return observed_timing(jobs_root(runs_folder()), data, train)


def run_estimate(data: DataConfig, train: TrainConfig) -> Estimate:
    """The estimate of one experiment; raises Pending while its setting is being timed."""
    validate(data, train)
    n_train, n_val, classes = available(data.source)
    return estimate_run(data, train, n_train, n_val, speed(train.model, data, train, classes),
                        observed(data, train))


def worker_start() -> float:
    from core.training.board import worker_start_seconds

    return worker_start_seconds(runs_folder())
