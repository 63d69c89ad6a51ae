"""The real download paths, run against stand-in hosts on loopback: TFDS and TF Hub themselves, no mocks.

A local HTTP server serves a miniature cats_vs_dogs archive in the real download's layout and a SavedModel
as the tarball a tfhub.dev handle resolves to. TFDS's download_and_prepare (in the Lab's worker process),
TF Hub's HTTP resolver and cache, training, the .h5 save and an offline reload all run for real.
"""
from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from stand_in_hosts import Route, StandInHost, hub_tarball, petimages_zip

import core.data.network
from core.data.network import can_reach as real_can_reach
from core.settings.config import DataConfig, ModelKind, TrainConfig
from core.settings.errors import DataError, ModelFileError
from core.settings.text import megabytes

ROOT = Path(__file__).resolve().parents[2]
ARCHIVE_PATH = "/download/kagglecatsanddogs_5340.zip"
HUB_PATH = "/google/tf2-preview/mobilenet_v2/feature_vector/4"


@pytest.fixture(scope="module")
def pet_archive(tmp_path_factory):
    return petimages_zip(tmp_path_factory.mktemp("archive") / "kagglecatsanddogs_5340.zip")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder of this test's own, as on a fresh server."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LAB_CACHE_DIR", str(folder))
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(folder / "tfhub"))
    return folder


@pytest.fixture
def online(monkeypatch):
    """The real reachability check: only the loopback stand-ins answer on these machines."""
    monkeypatch.setattr(core.data.network, "can_reach", real_can_reach)


@pytest.fixture
def host(pet_archive, demo_backbone, monkeypatch):
    routes = {ARCHIVE_PATH: Route(pet_archive.path.read_bytes()), HUB_PATH: Route(hub_tarball(demo_backbone))}
    with StandInHost(routes) as server:
        monkeypatch.setenv("LAB_CATS_VS_DOGS_URL", server.url(ARCHIVE_PATH))
        monkeypatch.setenv("LAB_CATS_VS_DOGS_CHECKSUM", pet_archive.checksum)
        yield server


def open_article(progress=None):
    from core.data.sources import open_source

    return open_source(DataConfig(source="tfds:cats_vs_dogs"), progress=progress)


def leftovers(cache: Path) -> list[Path]:
    return list((cache / "tfds" / "downloads").glob("**/*.tmp.*"))


def cli(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_article_path_downloads_prepares_trains_and_reloads_offline(cache, online, host, pet_archive, tmp_path,
                                                                    monkeypatch):
    import tensorflow_datasets as tfds

    from core.models.hub import cached_module_dir
    from core.safety.model_files import load_model
    from core.training.experiment import Callbacks, run_experiment

    handle = host.url(HUB_PATH)
    messages: list[str] = []
    run = run_experiment(DataConfig(source="tfds:cats_vs_dogs", image_size=32, batch_size=8),
                         TrainConfig(model=ModelKind.TRANSFER, epochs=1, handle=handle), tmp_path / "runs",
                         Callbacks(on_status=messages.append))

    assert host.requests.count(ARCHIVE_PATH) == 1
    assert f"{HUB_PATH}?tf-hub-format=compressed" in host.requests
    # TFDS's own generator ran: it kept the JFIF images (the one with stray bytes too) and dropped the 1,738 others.
    prepared = tfds.builder("cats_vs_dogs", data_dir=str(cache / "tfds"))
    assert prepared.is_prepared()
    assert prepared.info.splits["train"].num_examples == pet_archive.cats + pet_archive.dogs
    assert any(f"of {pet_archive.cats + pet_archive.dogs} examples written" in m for m in messages)
    assert (cached_module_dir(handle) / "saved_model.pb").is_file()
    assert not leftovers(cache)

    monkeypatch.setattr(core.data.network, "can_reach", lambda *a, **k: False)
    host.server.shutdown()
    served = len(host.requests)
    model, info = load_model(run / "model.h5")
    assert info.hub_handles == [handle]
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    assert model.predict(x, verbose=0).shape == (3, 2)
    # Offline now: the dataset opens from the prepared folder, the module from the hub cache.
    opened = open_article()
    assert opened.info.split_size("train") > 0
    assert opened.info.skipped == {"without a JFIF header (dropped by TFDS)": 1738}  # shown as "Files skipped"
    assert len(host.requests) == served


def test_a_dead_url_says_what_to_do(cache, online, host):
    del host.routes[ARCHIVE_PATH]  # the real URL once answered 404 (TFDS issue 3918)
    with pytest.raises(DataError) as err:
        open_article()
    message = str(err.value)
    assert host.url(ARCHIVE_PATH) in message and "HTTP 404" in message
    assert "kagglecatsanddogs_5340.zip" in message and "manual" in message and "folder:" in message
    assert "\n" not in message
    assert not leftovers(cache)


def test_a_file_with_the_wrong_checksum_is_refused_and_not_kept(cache, online, host, pet_archive, monkeypatch):
    monkeypatch.setenv("LAB_CATS_VS_DOGS_CHECKSUM", f"{pet_archive.size} {'0' * 64}")
    with pytest.raises(DataError) as err:
        open_article()
    message = str(err.value)
    assert host.url(ARCHIVE_PATH) in message and "checksum" in message and "\n" not in message
    assert not [p for p in (cache / "tfds" / "downloads").rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert not leftovers(cache)


def test_a_dropped_connection_says_so_and_the_next_try_starts_clean(cache, online, host, pet_archive):
    whole = host.routes[ARCHIVE_PATH]
    host.routes[ARCHIVE_PATH] = Route(whole.body, drop_after=pet_archive.size // 2)
    with pytest.raises(DataError) as err:
        open_article()
    message = str(err.value)
    assert host.url(ARCHIVE_PATH) in message and "\n" not in message
    got = re.search(r"dropped after ([\d.]+) MB of ([\d.]+) MB", message)
    assert got and 0 < float(got.group(1)) * 1e6 <= pet_archive.size // 2 + 500  # the half that arrived
    assert got.group(2) == megabytes(pet_archive.size).split()[0]
    assert not leftovers(cache)

    host.routes[ARCHIVE_PATH] = whole
    assert open_article().info.split_size("train") > 0


def test_a_full_disk_says_so(cache, online, host):
    def small_files():
        # Files may not grow past 64 KB: writing the archive fails as on a full disk (EFBIG, like ENOSPC).
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = cli("download", "--data", "tfds:cats_vs_dogs", preexec_fn=small_files)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out, err)
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: The disk ran out of space while downloading " + host.url(ARCHIVE_PATH))
    assert "LAB_CACHE_DIR" in line
    assert not leftovers(cache)


def test_a_copy_in_the_manual_folder_works_offline(cache, pet_archive, monkeypatch):
    from core.data.downloads import manual_dir

    # The configured address does not answer and the network check says offline: only the copy can serve.
    monkeypatch.setenv("LAB_CATS_VS_DOGS_URL", "http://127.0.0.1:9/kagglecatsanddogs_5340.zip")
    monkeypatch.setenv("LAB_CATS_VS_DOGS_CHECKSUM", pet_archive.checksum)
    copy = manual_dir(cache / "tfds") / "kagglecatsanddogs_5340.zip"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(pet_archive.path.read_bytes())
    source = open_article()
    assert source.info.split_size("train") + source.info.split_size("validation") == pet_archive.cats + pet_archive.dogs


def test_the_petimages_folder_opens_as_a_folder_source(pet_archive, tmp_path):
    from core.data.sources import open_source

    with zipfile.ZipFile(pet_archive.path) as archive:
        archive.extractall(tmp_path)
    source = open_source(DataConfig(source=f"folder:{tmp_path / 'PetImages'}"))
    assert source.class_names == ["Cat", "Dog"]
    assert source.info.skipped["unreadable image"] == len(pet_archive.zero_byte)
    assert source.info.skipped["not an image file"] == 2  # the two Thumbs.db
    kept = source.info.split_size("train") + source.info.split_size("validation")
    assert kept == 1738 - len(pet_archive.zero_byte) + pet_archive.cats + pet_archive.dogs


def wait_for(predicate, seconds: float = 120, what: str = ""):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def slow_host(tmp_path, monkeypatch):
    """A 3 MB archive sent at 300 KB/s: about 10 s of downloading to watch, share and interrupt."""
    archive = petimages_zip(tmp_path / "slow.zip", per_class=4, filler_bytes=3_000_000)
    with StandInHost({ARCHIVE_PATH: Route(archive.path.read_bytes(), rate=300_000)}) as server:
        monkeypatch.setenv("LAB_CATS_VS_DOGS_URL", server.url(ARCHIVE_PATH))
        monkeypatch.setenv("LAB_CATS_VS_DOGS_CHECKSUM", archive.checksum)
        yield server


def downloading(cache: Path) -> bool:
    from core.data.downloads import DOWNLOADING, read_status

    status = read_status(cache / "tfds", "cats_vs_dogs")
    return status is not None and status.phase == DOWNLOADING and status.done > 0


def test_a_second_process_follows_the_first_download_instead_of_starting_another(cache, online, slow_host):
    route = slow_host.routes[ARCHIVE_PATH]
    route.rate = 30_000  # slow enough that the second process is surely in time to see the first download
    first = cli("download", "--data", "tfds:cats_vs_dogs")
    wait_for(lambda: downloading(cache), what="the first download to start")
    second = cli("download", "--data", "tfds:cats_vs_dogs")
    seen = []
    for line in second.stderr:  # a line per phase: the first one's download shows here first
        seen.append(line)
        if line.startswith("Downloading"):
            break
    route.rate = None  # the rest at full speed
    out2, err2 = second.communicate(timeout=300)
    err2 = "".join(seen) + err2
    _out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    assert slow_host.requests.count(ARCHIVE_PATH) == 1
    # The second one showed the first one's progress: bytes of the total, a speed, then examples.
    assert re.search(rf"Downloading {re.escape(slow_host.url(ARCHIVE_PATH))}: [\d.]+ MB of [\d.]+ MB \(\d+%\)", err2)
    assert "examples written" in err2 or "downloaded and prepared" in err2
    assert "ready in" in out2


def test_a_killed_download_does_not_block_the_next_one(cache, online, slow_host):
    from core.data.downloads import is_running, read_status

    first = cli("download", "--data", "tfds:cats_vs_dogs")
    wait_for(lambda: downloading(cache), what="the download to start")
    worker = read_status(cache / "tfds", "cats_vs_dogs").pid
    os.kill(worker, signal.SIGKILL)  # no chance to tidy up or release anything itself
    _out, err = first.communicate(timeout=120)
    assert first.returncode == 1 and "stopped before it finished" in err
    assert not is_running(cache / "tfds", "cats_vs_dogs")
    assert leftovers(cache)  # what the killed worker left ...

    again = cli("download", "--data", "tfds:cats_vs_dogs")
    _out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert slow_host.requests.count(ARCHIVE_PATH) == 2
    assert not leftovers(cache)  # ... the next one removed


def test_cancel_stops_the_download_for_everyone_following_it(cache, online, slow_host):
    from core.data.downloads import cancel, is_running, read_status

    follower = cli("download", "--data", "tfds:cats_vs_dogs")
    wait_for(lambda: downloading(cache), what="the download to start")
    assert cancel("cats_vs_dogs", cache / "tfds")
    _out, err = follower.communicate(timeout=120)
    assert follower.returncode == 1 and "cancelled" in err.strip().splitlines()[-1]
    assert not is_running(cache / "tfds", "cats_vs_dogs")
    assert read_status(cache / "tfds", "cats_vs_dogs").phase == "cancelled"
    assert not leftovers(cache)


def test_a_hub_handle_that_answers_404_names_it(cache, online, host):
    from core.models.architectures import build_transfer

    missing = host.url("/google/no-such-module/1")
    with pytest.raises(ModelFileError) as err:
        build_transfer(2, 32, missing)
    assert missing in str(err.value) and "HTTP 404" in str(err.value) and "SavedModel folder" in str(err.value)
