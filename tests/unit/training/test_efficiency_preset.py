"""Data efficiency under the cloud preset: it trains inside the server, so the preset's caps apply to it as to
a training run, with its own lower caps on the image size and the images it holds."""
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


def test_one_measurement_at_a_time_in_the_server_under_the_cloud_preset(uploaded, lab_backbone):
    from core.training import efficiency

    data = DataConfig(source=f"folder:{uploaded}", image_size=48, batch_size=8)
    # Another visitor's measurement, still running:
    with efficiency._measuring(CLOUD), pytest.raises(LabError, match="Another data efficiency measurement is running"):
        data_efficiency(data, str(lab_backbone), (2,), {ModelKind.BASELINE: 1}, preset=CLOUD)
    with efficiency._measuring(CLOUD):  # its slot was given back
        pass
