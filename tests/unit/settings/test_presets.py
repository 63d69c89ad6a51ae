"""Deployment presets: which one is active, what it lets a run use, and that the dashboard shows and applies it."""
from __future__ import annotations

from dataclasses import replace

import pytest

import core.settings.presets
from core.settings.config import DataConfig, ModelKind, TrainConfig
from core.settings.errors import LabError
from core.settings.presets import PRESETS, active, active_preset, apply_preset, capped_batch_size

CLOUD, LOCAL = PRESETS["cloud"], PRESETS["local"]


@pytest.fixture
def no_preset(monkeypatch):
    monkeypatch.delenv("LAB_PRESET", raising=False)


def test_lab_preset_picks_the_preset_and_an_unknown_name_gets_the_stricter_one(monkeypatch):
    monkeypatch.setenv("LAB_PRESET", "Cloud ")
    assert active_preset() is CLOUD and active().reason == "LAB_PRESET=cloud"
    monkeypatch.setenv("LAB_PRESET", "local")
    assert active_preset() is LOCAL
    monkeypatch.setenv("LAB_PRESET", "clod")
    chosen = active()
    assert chosen.preset is CLOUD and "unknown" in chosen.reason


def test_without_lab_preset_the_cloud_checkout_folder_selects_cloud(no_preset, monkeypatch, tmp_path):
    assert active_preset() is LOCAL
    mount = tmp_path / "mount" / "src"
    (mount / "lab").mkdir(parents=True)
    monkeypatch.setattr(core.settings.presets, "CLOUD_MOUNT", mount)
    monkeypatch.chdir(mount / "lab")
    chosen = active()
    assert chosen.preset is CLOUD and "Streamlit Community Cloud" in chosen.reason


def test_the_local_preset_changes_nothing(demo_folder):
    data = DataConfig(source=f"folder:{demo_folder}", batch_size=256, image_size=512)
    assert apply_preset(data, TrainConfig(fine_tune_epochs=2), LOCAL) == data


def test_pages_offer_the_articles_batch_unless_the_preset_caps_it():
    assert capped_batch_size(32, LOCAL) == 32
    assert capped_batch_size(32, CLOUD) == 16 and capped_batch_size(8, CLOUD) == 8


def test_cloud_caps_all_images_at_its_limit_and_keeps_smaller_settings():
    everything = DataConfig(source="tfds:cats_vs_dogs", batch_size=16)
    assert apply_preset(everything, preset=CLOUD).limit == CLOUD.max_train_images
    small = DataConfig(source="tfds:cats_vs_dogs", limit=500, batch_size=8, image_size=160)
    assert apply_preset(small, TrainConfig(), CLOUD) == small


@pytest.mark.parametrize("change, message", [
    ({"limit": 2001}, "at most 2,000 images .asked for 2,001.; set the training-image limit to 2,000 or fewer"),
    ({"batch_size": 32}, "batches of at most 16 .asked for 32.; lower the batch size"),
    ({"image_size": 256}, "images of at most 224x224 .asked for 256.; lower the image size"),
    ({"source": "folder:/etc"}, "does not read folders on the server; upload a zip"),
])
def test_cloud_refuses_what_would_not_fit_and_says_what_to_change(change, message):
    data = replace(DataConfig(source="tfds:cats_vs_dogs", batch_size=16), **change)
    with pytest.raises(LabError, match=message):
        apply_preset(data, preset=CLOUD)


def test_cloud_reads_uploaded_and_generated_folders_inside_the_cache(tmp_path):
    from core.settings.paths import cache_dir

    inside = cache_dir() / "uploads" / "zip-1234" / "pets"
    assert apply_preset(DataConfig(source=f"folder:{inside}", batch_size=16), preset=CLOUD).source == f"folder:{inside}"
    escape = f"folder:{cache_dir()}/../elsewhere"
    with pytest.raises(LabError, match="does not read folders"):
        apply_preset(DataConfig(source=escape, batch_size=16), preset=CLOUD)


def test_cloud_refuses_fine_tuning_which_needs_more_memory_than_the_host_has():
    with pytest.raises(LabError, match="does not fine-tune"):
        apply_preset(DataConfig(source="tfds:cats_vs_dogs", batch_size=16),
                     TrainConfig(model=ModelKind.MOBILENET_V2, fine_tune_epochs=1), CLOUD)


def test_the_cloud_preset_trains_one_job_at_a_time_and_queues_the_next(monkeypatch, tmp_path):
    import subprocess
    import sys

    from core.training.board import Board
    from core.training.jobs import Experiment

    monkeypatch.setenv("LAB_PRESET", "cloud")
    started, workers = [], []

    def launch(job_dir):
        started.append(job_dir.name)
        workers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]))
        return workers[-1]

    board = Board(tmp_path, launcher=launch)  # the preset's max_concurrent_jobs
    experiment = Experiment(DataConfig(source="tfds:x"), TrainConfig(), 10.0)
    first = board.submit([experiment], ["a"], owner="one")
    second = board.submit([experiment], ["b"], owner="two")
    try:
        assert started == [first.job_id]
        assert board.view(second.job_id).queue_position == 1
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def test_home_page_says_which_preset_is_active(open_page, monkeypatch):
    monkeypatch.setenv("LAB_PRESET", "cloud")
    at = open_page("home")
    assert not at.exception
    captions = "\n".join(c.value for c in at.caption)
    assert "Preset: cloud" in captions and "LAB_PRESET=cloud" in captions and "2,000 training images" in captions


def test_experiments_page_applies_the_preset(open_page, monkeypatch, demo_folder):
    """Under the cloud preset a folder outside the Lab's cache, or a batch over the cap, gets the preset's
    message where the estimate would be."""
    import shutil

    from core.settings.paths import cache_dir

    monkeypatch.setenv("LAB_PRESET", "cloud")
    state = {"exp_image_size": 64, "lab_handle": "https://tfhub.dev/google/x/1"}
    at = open_page("experiments", state=state | {"lab_source": f"folder:{demo_folder}"})
    assert not at.exception
    assert "does not read folders on the server" in "\n".join(e.value for e in at.error)

    uploaded = cache_dir() / "uploads" / "preset-test" / "shapes"
    if not uploaded.exists():
        shutil.copytree(demo_folder, uploaded)
    at = open_page("experiments", state=state | {"lab_source": f"folder:{uploaded}", "exp_b_batch": 64})
    assert not at.exception
    errors = "\n".join(e.value for e in at.error)
    assert "batches of at most 16 (asked for 64)" in errors
    assert "does not read folders" not in errors
    assert at.session_state["exp_t_batch"] == 16  # the page's default batch is the preset's cap, not 32
