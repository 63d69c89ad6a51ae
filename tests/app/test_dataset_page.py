"""The Dataset page: offline TFDS, a generated folder, an uploaded zip, broken inputs."""
from __future__ import annotations

import io
import zipfile

import pytest
import streamlit as st
from lab_helpers import wait_for_estimates
from PIL import Image
from stand_in_hosts import Route, StandInHost, petimages_zip

from core.data.downloads import DownloadStatus
from core.data.network import can_reach as real_can_reach  # bound before the autouse fixture replaces it


def choose_folder(at, path) -> None:
    at.radio[0].set_value("folder").run()
    at.text_input[0].set_value(str(path)).run()
    at.button[0].click().run()


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_offline_tfds_says_what_to_do_instead(open_page):
    at = open_page("dataset")
    assert not at.exception
    assert at.radio[0].value == "article"
    at.button[0].click().run()  # Load dataset: cats_vs_dogs is neither cached nor downloadable here
    assert not at.exception
    message = at.error[0].value
    assert "network is unreachable" in message
    assert "folder" in message and "SavedModel" in message
    assert "lab_source" not in at.session_state  # nothing that failed to open becomes the training source


def test_folder_shows_counts_charts_and_sixteen_labelled_samples(open_page, demo_folder):
    at = open_page("dataset")
    choose_folder(at, demo_folder)
    assert not at.exception
    assert not at.error
    assert metric(at, "Classes") == "2"
    assert metric(at, "Training images") == "96"
    assert metric(at, "Validation images") == "24"
    assert metric(at, "Files skipped") == "0"
    assert len(at.get("plotly_chart")) == 2
    images = at.get("image")
    assert len(images) >= 16
    captions = {img.proto.imgs[0].caption for img in images}
    assert captions == {"circles", "squares"}
    assert at.session_state["lab_source"] == f"folder:{demo_folder}"


def test_shuffle_draws_other_samples(open_page, demo_folder):
    at = open_page("dataset")
    choose_folder(at, demo_folder)
    before = [img.proto.imgs[0].url for img in at.get("image")]
    next(b for b in at.button if b.label == "Shuffle").click().run()
    after = [img.proto.imgs[0].url for img in at.get("image")]
    assert len(after) == len(before) >= 16
    assert before != after


def test_unreadable_and_non_image_files_are_counted(open_page, tmp_path):
    from core.data.demo import make_demo_folder

    root = make_demo_folder(tmp_path / "mixed", per_class=12, size=(48, 48))
    (root / "circles" / "notes.txt").write_text("not an image")
    (root / "squares" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    at = open_page("dataset")
    choose_folder(at, root)
    assert not at.exception
    assert metric(at, "Files skipped") == "2"
    assert any("skipped files" in e.label for e in at.expander)


def test_missing_folder_is_one_error_line(open_page, tmp_path):
    at = open_page("dataset")
    choose_folder(at, tmp_path / "nowhere")
    assert not at.exception
    assert len(at.error) == 1
    assert "does not exist" in at.error[0].value


def zip_of(folder) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"pets/{path.relative_to(folder)}")
        archive.writestr("pets/README.txt", "two classes")
    return buffer.getvalue()


def test_uploaded_zip_is_unpacked_and_loaded(open_page, tmp_path):
    from core.data.demo import make_demo_folder
    from core.settings.paths import uploads_dir

    folder = make_demo_folder(tmp_path / "zipme", per_class=10, size=(40, 40))
    at = open_page("dataset")
    at.radio[0].set_value("zip").run()
    at.file_uploader[0].set_value(("pets.zip", zip_of(folder), "application/zip")).run()
    assert not at.exception
    assert not at.error
    assert any("20 images" in c.value and "1 other files" in c.value for c in at.caption)
    at.button[0].click().run()
    assert not at.exception
    source = at.session_state["lab_source"]
    assert source.startswith(f"folder:{uploads_dir()}")
    assert source.endswith("/pets")  # the wrapper folder inside the zip is looked through
    assert metric(at, "Classes") == "2"


def test_a_zip_that_is_not_a_zip_is_refused(open_page):
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    at = open_page("dataset")
    at.radio[0].set_value("zip").run()
    at.file_uploader[0].set_value(("photos.zip", png.getvalue(), "application/zip")).run()
    assert not at.exception
    assert "not a zip file" in at.error[0].value
    assert at.button[0].disabled


def test_generated_demo_sets_up_an_offline_dataset_and_hub_handle(open_page, pretrained_demo):
    from core.settings.paths import cache_dir

    at = open_page("experiments", state={"exp_image_size": 128})
    assert at.text_input(key="exp_t_handle").value.startswith("https://tfhub.dev/")
    at.switch_page("app_pages/dataset.py").run()
    at.radio[0].set_value("demo").run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert metric(at, "Classes") == "3"
    assert at.session_state["lab_source"] == pretrained_demo.source == f"folder:{cache_dir() / 'demo' / 'scenes-v1'}"
    assert at.radio[0].value == "demo"  # the user's choice, not "A folder on this machine"
    assert at.session_state["exp_image_size"] == 64  # the size the demo is made for, not the article's 224
    wait_for_estimates(at.switch_page("app_pages/experiments.py").run())
    assert not at.exception and not at.error
    assert at.text_input(key="exp_t_handle").value == str(pretrained_demo.backbone) == str(
        cache_dir() / "demo" / "backbone-v1")
    assert len([m for m in at.markdown if m.value.startswith("**Estimated duration")]) == 2
    at.switch_page("app_pages/dataset.py").run()
    assert at.radio[0].value == "demo"


@pytest.fixture
def stand_in_archive_host(tmp_path, monkeypatch):
    """The article's archive (a miniature in its real layout) served on loopback, with an empty cache folder."""
    import core.data.network

    archive = petimages_zip(tmp_path / "kagglecatsanddogs_5340.zip", per_class=4, filler_bytes=2_000_000)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(core.data.network, "can_reach", real_can_reach)
    with StandInHost({"/k.zip": Route(archive.path.read_bytes(), rate=250_000)}) as host:
        monkeypatch.setenv("LAB_CATS_VS_DOGS_URL", host.url("/k.zip"))
        monkeypatch.setenv("LAB_CATS_VS_DOGS_CHECKSUM", archive.checksum)
        yield host, archive
    # Opened sources are shared by every session of a server (and so by the tests): forget this cache folder's.
    st.cache_resource.clear()
    st.cache_data.clear()


def test_the_article_dataset_downloads_then_opens(open_page, stand_in_archive_host):
    host, archive = stand_in_archive_host
    at = open_page("dataset")
    at.button[0].click().run()  # Load dataset: downloads through the worker, follows it, opens it
    assert not at.exception and not at.error
    assert host.requests == ["/k.zip"]
    assert int(metric(at, "Training images")) + int(metric(at, "Validation images")) == archive.cats + archive.dogs
    assert at.session_state["lab_source"] == "tfds:cats_vs_dogs"


def test_a_running_download_is_shown_and_can_be_cancelled(open_page, stand_in_archive_host):
    import subprocess
    import sys
    import time
    from pathlib import Path

    from core.data.downloads import read_status
    from core.settings.paths import tfds_dir

    host, _ = stand_in_archive_host
    host.routes["/k.zip"].rate = 30_000  # a download that surely outlasts opening the page
    root = Path(__file__).resolve().parents[2]
    cli = subprocess.Popen([sys.executable, "-m", "core", "download", "--data", "tfds:cats_vs_dogs"], cwd=root,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (read_status(tfds_dir(), "cats_vs_dogs") or DownloadStatus("x")).phase != "downloading":
        assert time.monotonic() < deadline and cli.poll() is None, cli.stderr.read() if cli.poll() else ""
        time.sleep(0.2)
    at = open_page("dataset")
    assert "is being downloaded" in at.info[0].value
    next(b for b in at.button if b.label == "Cancel download").click().run()
    assert "Cancelled the download" in at.warning[0].value
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 1 and "cancelled" in err
    assert read_status(tfds_dir(), "cats_vs_dogs").phase == "cancelled"


def tiny_folder(root, side: int):
    for k, colour in enumerate(((220, 40, 40), (40, 40, 220))):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (side, side), tuple(c - 5 * i for c in colour)).save(root / f"class{k}" / f"{i}.png")
    return root


def test_images_far_smaller_than_the_models_input_are_said_to_be_enlarged(open_page, tmp_path):
    at = open_page("dataset")
    choose_folder(at, tiny_folder(tmp_path / "tiny", 25))
    assert not at.exception and not at.error
    [note] = [i.value for i in at.info]
    assert note.startswith("10 of 10 images are at most half the model's input side and get enlarged to 224x224 "
                           "(the smallest, 25x25, about 9x)")
    # The side is the Experiments page's image size: at 48 pixels, 25x25 images are no longer far smaller.
    at = open_page("dataset", state={"exp_image_size": 48})
    choose_folder(at, tmp_path / "tiny")
    assert not at.info


def test_images_near_the_models_input_get_no_note(open_page, tmp_path):
    at = open_page("dataset")
    choose_folder(at, tiny_folder(tmp_path / "fine", 200))
    assert not at.exception and not at.error and not at.info
