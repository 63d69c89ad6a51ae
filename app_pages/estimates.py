"""The Experiments page's duration estimates: models timed on this machine, cached for every session.

Timing a model is the same work for every visitor of this server, so st.cache_data shares the results;
core.training.timing measures in a child process and core.training.estimate does the arithmetic. Where runs of a setting finished here
already, their recorded costs (read fresh each time: a run may have just finished) replace the timing.
"""
import dataclasses

import streamlit as st

from app_pages.common import open_source_cached, runs_folder
from core.settings.config import DataConfig, ModelKind, TrainConfig, validate
from core.training.estimate import Estimate, Observed, estimate_run, observed_timing


# Timing is the same work for every visitor, so its results are shared; it runs in a child process
# (core.training.timing), so a visitor waiting for it holds nothing the other visitors need.
@st.cache_data(show_spinner=False, max_entries=32)
def model_speed(kind_value: str, image_size: int, batch_size: int, handle: str, num_classes: int):
    from core.training import timing

    return timing.speed(ModelKind(kind_value), image_size, batch_size, handle, num_classes, _lock_folder())


@st.cache_data(show_spinner=False, max_entries=16)
def decode_speed(source: str, image_size: int, batch_size: int) -> float:
    from core.training import timing

    return timing.decode(source, image_size, batch_size, _lock_folder())


@st.cache_data(show_spinner=False, max_entries=16)
def fine_tune_speed(image_size: int, batch_size: int, handle: str, num_classes: int) -> tuple[float, float]:
    from core.training import timing

    return timing.fine_tune(image_size, batch_size, handle, num_classes, _lock_folder())


def _lock_folder():
    from core.training.board import jobs_root

    return jobs_root(runs_folder())


def available(source: str) -> tuple[int, int, int]:
    """(training images, validation images, classes) of the whole source."""
    info = open_source_cached(source).info
    return info.split_size("train"), info.split_size("validation"), info.num_classes


def speed(kind: ModelKind, data: DataConfig, train: TrainConfig, num_classes: int):
    measured = model_speed(kind.value, data.image_size, data.batch_size, train.handle, num_classes)
    measured = dataclasses.replace(measured, decode=decode_speed(data.source, data.image_size, data.batch_size))
    if train.fine_tune_epochs:  # timed only when asked for: the slowest step there is to time
        per_image, setup = fine_tune_speed(data.image_size, data.batch_size, train.handle, num_classes)
        measured = dataclasses.replace(measured, fine_tune=per_image, fine_tune_setup=setup)
    return measured


def observed(data: DataConfig, train: TrainConfig) -> Observed | None:
    """What the latest finished runs of this setting took on this server, if any finished."""
    from core.training.board import jobs_root

    return observed_timing(jobs_root(runs_folder()), data, train)


def run_estimate(data: DataConfig, train: TrainConfig) -> Estimate:
    validate(data, train)
    n_train, n_val, classes = available(data.source)
    return estimate_run(data, train, n_train, n_val, speed(train.model, data, train, classes),
                        observed(data, train))


def worker_start() -> float:
    from core.training.board import worker_start_seconds

    return worker_start_seconds(runs_folder())
