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
                     TrainConfig(model=ModelKind.TRANSFER, fine_tune_epochs=1), CLOUD)


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


def test_cloud_caps_epochs_and_fine_tuning_epochs_in_one_line():
    data = DataConfig(source="tfds:cats_vs_dogs", batch_size=16)
    with pytest.raises(LabError, match=r"^The cloud preset trains at most 20 epochs \(asked for 500\); lower the "
                                       r"epochs\.$"):
        apply_preset(data, TrainConfig(model=ModelKind.BASELINE, epochs=500), CLOUD)
    assert apply_preset(data, TrainConfig(model=ModelKind.BASELINE, epochs=15), CLOUD).batch_size == 16  # the article's
    tuning = replace(CLOUD, allow_fine_tuning=True)  # a host with the memory for it still caps its length
    with pytest.raises(LabError, match=r"at most 20 fine-tuning epochs \(asked for 30\); lower the fine-tuning epochs"):
        apply_preset(data, TrainConfig(model=ModelKind.TRANSFER, fine_tune_epochs=30), tuning)
    local = DataConfig(source="tfds:cats_vs_dogs")
    assert apply_preset(local, TrainConfig(epochs=500, fine_tune_epochs=500), LOCAL) == local


def test_a_training_longer_than_the_cloud_allows_is_refused_by_its_estimate():
    from core.settings.presets import check_job_length

    check_job_length(600, CLOUD)  # exactly the cap
    with pytest.raises(LabError) as refused:
        check_job_length(14 * 60, CLOUD)
    assert str(refused.value) == ("This training would take about 14 min; the hosted Lab runs trainings of at most "
                                  "10 min: use fewer images or epochs.")
    with pytest.raises(LabError, match="about 11 min"):
        check_job_length(601, CLOUD)  # never "about 10 min" for a training that is over 10
    for unknown in (float("nan"), float("inf"), None):
        with pytest.raises(LabError, match="could not be estimated"):
            check_job_length(unknown, CLOUD)
    check_job_length(10 * 3600, LOCAL)


def test_data_efficiency_has_its_own_caps_on_the_cloud(tmp_path):
    from core.settings.paths import cache_dir
    from core.settings.presets import apply_efficiency_preset, check_efficiency_images

    inside = f"folder:{cache_dir() / 'uploads' / 'zip-eff' / 'pets'}"
    ok = DataConfig(source=inside, image_size=128, batch_size=16)
    assert apply_efficiency_preset(ok, [15, 3], CLOUD).image_size == 128
    for data, epochs, message in (
            (replace(ok, image_size=224), [15, 3], r"data efficiency on images of at most 128x128 \(asked for 224\)"),
            (replace(ok, batch_size=32), [15, 3], r"batches of at most 16 \(asked for 32\)"),
            (ok, [500, 3], r"at most 20 epochs \(asked for 500\)"),
            (replace(ok, source=f"folder:{tmp_path}"), [15, 3], "does not read folders on the server")):
        with pytest.raises(LabError, match=message):
            apply_efficiency_preset(data, epochs, CLOUD)
    check_efficiency_images(100, 10, CLOUD)
    with pytest.raises(LabError, match=r"at most 1,000 training images \(asked for 80 per class of 20 classes: "
                                       r"1,600\); use smaller counts"):
        check_efficiency_images(80, 20, CLOUD)
    big = replace(ok, image_size=512, batch_size=256, source=f"folder:{tmp_path}")
    assert apply_efficiency_preset(big, [500], LOCAL) == big
    check_efficiency_images(10_000, 1000, LOCAL)


def test_a_folder_outside_the_cache_is_refused_alike_whether_it_exists_or_leads_into_the_cache(tmp_path):
    """The data source check reads the text first: a link outside the cache that leads into it is refused
    like a folder that does not exist, so the answer never tells which of the server's paths exist."""
    from core.settings.paths import cache_dir

    target = cache_dir() / "uploads" / "zip-link" / "pets"
    target.mkdir(parents=True, exist_ok=True)
    (tmp_path / "link").symlink_to(cache_dir())
    for folder in (tmp_path / "link" / "uploads" / "zip-link" / "pets", tmp_path / "missing" / "uploads"):
        with pytest.raises(LabError, match="does not read folders on the server"):
            apply_preset(DataConfig(source=f"folder:{folder}", batch_size=16), preset=CLOUD)
    assert apply_preset(DataConfig(source=f"folder:{target}", batch_size=16), preset=CLOUD).source == f"folder:{target}"
