"""Data efficiency under the cloud preset: the preset's caps apply to it as to a training run, with its own
lower caps on the image size and the images it holds (it keeps its training images in memory)."""
from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from core.settings.config import DataConfig, ModelKind
from core.settings.errors import LabError
from core.settings.presets import PRESETS
from core.training.efficiency import data_efficiency

CLOUD = PRESETS["cloud"]


@pytest.fixture
def uploaded(demo_folder):
    """The demo folder where a hosted Lab keeps an unpacked upload: inside the cache folder."""
    from core.settings.paths import uploads_dir

    folder = uploads_dir() / "zip-efficiency" / "shapes"
    if not folder.exists():
        shutil.copytree(demo_folder, folder)
    return folder


@pytest.fixture
def lab_backbone(demo_backbone):
    from core.settings.paths import cache_dir

    folder = cache_dir() / "efficiency-test" / "backbone"
    if not folder.exists():
        shutil.copytree(demo_backbone, folder)
    return folder


@pytest.mark.parametrize("change, counts, epochs, message", [
    ({"image_size": 224}, (5,), 15, r"data efficiency on images of at most 128x128 \(asked for 224\)"),
    ({"batch_size": 32}, (5,), 15, r"batches of at most 16 \(asked for 32\)"),
    ({}, (5,), 500, r"at most 20 epochs \(asked for 500\)"),
    ({}, (5, 600), 15, r"at most 1,000 training images \(asked for 600 per class of 2 classes: 1,200\)"),
])
def test_the_cloud_preset_refuses_what_would_not_fit_before_training(uploaded, lab_backbone, change, counts, epochs,
                                                                     message):
    data = replace(DataConfig(source=f"folder:{uploaded}", image_size=64, batch_size=16), **change)
    statuses = []
    with pytest.raises(LabError, match=message):
        data_efficiency(data, str(lab_backbone), counts, {ModelKind.BASELINE: epochs}, on_status=statuses.append,
                        preset=CLOUD)
    assert not any("features" in s or "training" in s for s in statuses)  # nothing was trained


def test_the_cloud_preset_refuses_server_folders_for_the_data_and_the_backbone(demo_folder, demo_backbone, uploaded):
    data = DataConfig(source=f"folder:{demo_folder}", image_size=64, batch_size=16)
    with pytest.raises(LabError, match="does not read folders on the server"):
        data_efficiency(data, str(demo_backbone), (5,), preset=CLOUD)
    with pytest.raises(LabError, match="^This server only uses TF Hub"):
        data_efficiency(replace(data, source=f"folder:{uploaded}"), str(demo_backbone), (5,), preset=CLOUD)


def test_within_the_caps_it_measures_and_its_status_names_no_server_folder(uploaded, lab_backbone):
    data = DataConfig(source=f"folder:{uploaded}", image_size=48, batch_size=8)
    statuses = []
    result = data_efficiency(data, str(lab_backbone), (2,), {ModelKind.BASELINE: 1}, on_status=statuses.append,
                             preset=CLOUD)
    assert [n for n, _ in result.accuracies(ModelKind.BASELINE)] == [2]
    assert statuses[0] == "Opening shapes ..."
    assert not any(str(uploaded) in s for s in statuses)


def test_a_measurement_is_a_job_of_the_board_whose_worker_applies_the_preset(uploaded, lab_backbone, tmp_path,
                                                                           monkeypatch):
    """One at a time, in a worker process, its result kept in the job's folder; the worker applies the caps
    of the preset it runs under, whatever the spec asks."""
    import time

    from core.settings.config import TrainConfig
    from core.settings.files import read_json
    from core.training.board import Board
    from core.training.efficiency import RESULT_FILE, TASK, result_from_dict
    from core.training.jobs import DONE, FAILED, Experiment

    monkeypatch.setenv("LAB_PRESET", "cloud")
    board = Board(tmp_path, max_concurrent=1)
    data = DataConfig(source=f"folder:{uploaded}", image_size=48, batch_size=8)
    train = TrainConfig(model=ModelKind.TRANSFER, handle=str(lab_backbone))
    ok = board.submit([Experiment(data, train)], ["m1"], owner="a", task={"kind": TASK, "counts": [2],
                                                                           "baseline_epochs": 1})
    too_big = board.submit([Experiment(replace(data, image_size=224), train)], ["m2"], owner="b",
                           task={"kind": TASK, "counts": [2], "baseline_epochs": 1})
    assert board.view(too_big.job_id).queued  # behind the first: one measurement at a time
    deadline = time.monotonic() + 300
    while not board.view(too_big.job_id).finished:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    done = board.view(ok.job_id)
    assert done.snapshot.phase == DONE, done.snapshot.message
    result = result_from_dict(read_json(done.path / RESULT_FILE, dict))
    assert [n for n, _ in result.accuracies(ModelKind.BASELINE)] == [2]
    refused = board.view(too_big.job_id).snapshot
    assert refused.phase == FAILED and "at most 128x128" in refused.message
    assert not (board.view(too_big.job_id).path / RESULT_FILE).exists()
