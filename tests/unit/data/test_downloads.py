"""The download worker's pieces that need no worker: progress lines, the lock check, the planned archives."""
from __future__ import annotations

import fcntl
import json

import pytest

import core.data.network
from core.data.downloads import (
    DOWNLOADING,
    PREPARING,
    DownloadStatus,
    configured_hosts,
    is_running,
    planned_archives,
)
from core.data.network import hosts_of
from core.settings.errors import DataError

REAL_URL = "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"


def test_download_line_gives_bytes_of_total_speed_and_time_left():
    status = DownloadStatus("cats_vs_dogs", DOWNLOADING, done=206_000_000, total=824_887_076, rate=10_300_000,
                            url="https://example.org/a.zip")
    assert status.fraction == pytest.approx(0.2497, abs=1e-3)
    assert status.eta == pytest.approx(60.09, abs=0.1)
    assert status.line() == ("Downloading https://example.org/a.zip: 206 MB of 825 MB (25%), 10 MB/s, "
                             "about 1 min left")


def test_prepare_line_counts_examples_and_unknown_totals_stay_readable():
    status = DownloadStatus("cats_vs_dogs", PREPARING, done=5_120, total=23_262, rate=100)
    assert status.line() == "Preparing TFDS 'cats_vs_dogs': 5,120 of 23,262 examples written, about 3 min 01 s left"
    bare = DownloadStatus("tf_flowers", DOWNLOADING, done=1_500_000, url="https://example.org/f.tgz")
    assert bare.fraction is None and bare.eta is None
    assert bare.line() == "Downloading https://example.org/f.tgz: 1.5 MB"


def test_a_held_lock_counts_as_running_and_a_released_one_does_not(tmp_path):
    assert not is_running(tmp_path, "cats_vs_dogs")  # no lock file at all
    with open(tmp_path / "cats_vs_dogs.lab-download.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert is_running(tmp_path, "cats_vs_dogs")
    assert not is_running(tmp_path, "cats_vs_dogs")  # closed with its holder, as when a worker dies


@pytest.fixture
def article_builder(tmp_path):
    import tensorflow_datasets as tfds

    return tfds.builder("cats_vs_dogs", data_dir=str(tmp_path))


def test_planned_archive_is_the_registered_one_unless_a_mirror_is_set(article_builder, monkeypatch):
    monkeypatch.delenv("LAB_CATS_VS_DOGS_URL", raising=False)
    (archive,) = planned_archives(article_builder)
    assert (archive.url, archive.size, archive.filename) == (REAL_URL, 824_887_076, "kagglecatsanddogs_5340.zip")

    monkeypatch.setenv("LAB_CATS_VS_DOGS_URL", "https://mirror.example.org/pets.zip")
    (mirror,) = planned_archives(article_builder)
    # A mirror of the same file: the registered size and checksum still apply, the manual copy's name too.
    assert (mirror.url, mirror.size, mirror.sha256, mirror.filename) == (
        "https://mirror.example.org/pets.zip", archive.size, archive.sha256, "kagglecatsanddogs_5340.zip")

    monkeypatch.setenv("LAB_CATS_VS_DOGS_CHECKSUM", f"1234 {'ab' * 32}")
    (own,) = planned_archives(article_builder)
    assert (own.size, own.sha256) == (1234, "ab" * 32)

    monkeypatch.setenv("LAB_CATS_VS_DOGS_CHECKSUM", "sha256:abc")
    with pytest.raises(DataError, match="LAB_CATS_VS_DOGS_CHECKSUM should be 'SIZE SHA256'"):
        planned_archives(article_builder)


def test_hosts_come_from_the_urls_with_their_ports():
    assert hosts_of(["http://127.0.0.1:8123/a.zip", "https://tfhub.dev/google/x/1", "https://tfhub.dev/y",
                     "http://mirror.example.org/b", "gs://bucket/c", "", "http://bad:port/x"]) == (
        ("127.0.0.1", 8123), ("tfhub.dev", 443), ("mirror.example.org", 80))


def test_is_online_asks_the_port_of_each_host(monkeypatch):
    asked = []

    def reach(host, port=443, timeout=3.0):
        asked.append((host, port))
        return port == 8123

    monkeypatch.setattr(core.data.network, "can_reach", reach)
    assert core.data.network.is_online((("127.0.0.1", 8123),)) is True
    assert core.data.network.is_online(("tfhub.dev",)) is False
    assert sorted(asked) == [("127.0.0.1", 8123), ("tfhub.dev", 443)]


def test_a_configured_mirror_joins_the_hosts_the_sidebar_asks(monkeypatch):
    monkeypatch.delenv("LAB_CATS_VS_DOGS_URL", raising=False)
    assert configured_hosts() == core.data.network.DOWNLOAD_HOSTS
    monkeypatch.setenv("LAB_CATS_VS_DOGS_URL", "http://127.0.0.1:8123/a.zip")
    assert configured_hosts()[-1] == ("127.0.0.1", 8123)


def test_a_damaged_status_file_reads_as_no_status(tmp_path):
    from core.data.downloads import read_status

    path = tmp_path / "cats_vs_dogs.lab-download.json"
    for text in ("[" * 100_000, json.dumps({"dataset": "cats_vs_dogs", "phase": DOWNLOADING, "done": "lots"}),
                 json.dumps({"phase": DOWNLOADING}), json.dumps(["cats_vs_dogs"])):
        path.write_text(text)
        assert read_status(tmp_path, "cats_vs_dogs") is None
    path.write_text(json.dumps({"dataset": "cats_vs_dogs", "phase": DOWNLOADING, "done": 5, "total": None,
                                "rate": 1.5, "url": "https://example.org/a.zip", "pid": 7, "updated": 1.0}))
    assert read_status(tmp_path, "cats_vs_dogs").line() == "Downloading https://example.org/a.zip: 0.000 MB, 0.000 MB/s"


def test_a_status_written_on_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno
    import os

    from core.data.downloads import _write_status, read_status

    _write_status(tmp_path, DownloadStatus("cats_vs_dogs", DOWNLOADING, done=5))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        _write_status(tmp_path, DownloadStatus("cats_vs_dogs", DOWNLOADING, done=6))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["cats_vs_dogs.lab-download.json"]
    assert read_status(tmp_path, "cats_vs_dogs").done == 5
