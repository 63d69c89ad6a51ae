"""Offline detection: ask the network first, fail before TFDS or TF Hub start their slow retries.

Speed is shown by behaviour, not by a clock: the slow download paths are replaced by functions that fail
the test if called, and the reachability check is seen to use a short timeout.
"""
from __future__ import annotations

import shutil
import socket
import threading

import numpy as np
import pytest

import core.data.network
from core.data.network import can_reach as real_can_reach  # bound before the autouse fixture replaces it
from core.settings.config import DataConfig
from core.settings.errors import OfflineError

ARTICLE_URL = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"


@pytest.fixture
def network_down(monkeypatch):
    """Every host unreachable; records the timeout each check was given."""
    calls = []

    def unreachable(host, port=443, timeout=3.0):
        calls.append((host, timeout))
        return False

    monkeypatch.setattr(core.data.network, "can_reach", unreachable)
    return calls


@pytest.fixture
def no_slow_downloads(monkeypatch):
    """TFDS's preparation and TF Hub's module loading fail the test if they are reached at all."""
    import tensorflow_datasets as tfds
    import tensorflow_hub.module_v2

    def forbidden(*args, **kwargs):
        pytest.fail("a slow download path was reached while offline")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", forbidden)
    monkeypatch.setattr(tensorflow_hub.module_v2, "load", forbidden)


def assert_names_alternatives(message: str, cache) -> None:
    assert "unreachable" in message
    assert "folder:" in message  # a folder of images instead of TFDS
    assert "SavedModel" in message and "--handle" in message  # a local module instead of TF Hub
    assert str(cache) in message
    assert "Traceback" not in message


def test_tfds_not_prepared_offline_fails_fast_with_alternatives(network_down, no_slow_downloads, tmp_path,
                                                                monkeypatch):
    from core.data.sources import open_source
    from core.settings.paths import cache_dir

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    with pytest.raises(OfflineError) as err:
        open_source(DataConfig(source="tfds:cats_vs_dogs"))
    message = str(err.value)
    assert "cats_vs_dogs" in message
    assert_names_alternatives(message, cache_dir())
    assert network_down and all(timeout <= 5 for _, timeout in network_down)


def test_asking_whether_a_dataset_is_downloaded_leaves_the_log_alone(tmp_path, caplog):
    """TFDS warns on every is_prepared() of a dataset not downloaded yet; a download's follower asks every second."""
    import logging

    from core.data.downloads import open_builder

    builder = open_builder("cats_vs_dogs", tmp_path)
    with caplog.at_level(logging.INFO):
        assert not builder.is_prepared() and not builder.is_prepared()
        logging.getLogger("absl").warning("Variant folder %s has no %s", tmp_path, "features.json")
    assert [r.getMessage() for r in caplog.records] == [f"Variant folder {tmp_path} has no features.json"]


def test_hub_url_not_cached_offline_fails_fast_with_alternatives(network_down, no_slow_downloads):
    from core.models.architectures import build_transfer
    from core.settings.paths import hub_cache_dir

    with pytest.raises(OfflineError) as err:
        build_transfer(2, 64, ARTICLE_URL)
    message = str(err.value)
    assert ARTICLE_URL in message
    assert_names_alternatives(message, hub_cache_dir())
    assert network_down and all(timeout <= 5 for _, timeout in network_down)


def test_kaggle_handle_not_cached_offline_is_refused(network_down, no_slow_downloads):
    from core.models.hub import check_available

    with pytest.raises(OfflineError, match="www.kaggle.com/models/google/mobilenet-v2"):
        check_available("google/mobilenet-v2/tensorFlow2/tf2-preview-feature-vector/4")


@pytest.fixture
def cached_article_module(demo_backbone):
    """The demo backbone placed where TF Hub caches the article's URL, as a past online run would leave it."""
    from core.models.hub import cached_module_dir

    target = cached_module_dir(ARTICLE_URL)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(demo_backbone, target)
    yield target
    shutil.rmtree(target, ignore_errors=True)


def test_cached_hub_url_builds_and_reloads_without_the_network(monkeypatch, cached_article_module, tmp_path):
    from core.models.architectures import build_transfer
    from core.models.hub import check_available, is_cached
    from core.safety.model_files import load_model, save_model

    def must_not_ask(*args, **kwargs):
        pytest.fail("the network was checked for a module that is in the cache")

    monkeypatch.setattr(core.data.network, "can_reach", must_not_ask)
    assert is_cached(ARTICLE_URL)
    assert check_available(ARTICLE_URL) == ARTICLE_URL

    model = build_transfer(2, 32, ARTICLE_URL)
    save_model(model, tmp_path / "online.h5", ["cat", "dog"])
    reloaded, info = load_model(tmp_path / "online.h5")
    assert info.hub_handles == [ARTICLE_URL]
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    assert np.max(np.abs(model.predict(x, verbose=0) - reloaded.predict(x, verbose=0))) == 0.0


def test_local_savedmodel_handle_never_asks_the_network(monkeypatch, demo_backbone):
    from core.models.hub import check_available

    monkeypatch.setattr(core.data.network, "can_reach", lambda *a, **k: pytest.fail("network checked for a folder"))
    assert check_available(str(demo_backbone)) == str(demo_backbone.resolve())


def test_can_reach_gives_up_on_a_hanging_resolver(monkeypatch):
    release = threading.Event()
    attempts: list[threading.Thread] = []

    def hanging(address, timeout=None, **kwargs):
        attempts.append(threading.current_thread())
        release.wait(60)  # like getaddrinfo on a dead network, which ignores socket timeouts
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hanging)
    try:
        assert real_can_reach("storage.googleapis.com", timeout=0.2) is False
        (attempt,) = attempts
        # the answer came while the attempt is still blocked, from a thread that will not keep us alive
        assert attempt is not threading.current_thread()
        assert attempt.is_alive() and attempt.daemon
    finally:
        release.set()


def test_can_reach_reports_a_refused_and_an_open_connection(monkeypatch):
    class Conn:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: Conn())
    assert real_can_reach("tfhub.dev", timeout=1) is True

    def refused(address, timeout=None):
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    assert real_can_reach("tfhub.dev", timeout=1) is False


def test_is_online_when_any_download_host_answers(monkeypatch):
    monkeypatch.setattr(core.data.network, "can_reach", lambda host, port=443, timeout=3.0: host == "tfhub.dev")
    assert core.data.network.is_online() is True
    monkeypatch.setattr(core.data.network, "can_reach", lambda host, port=443, timeout=3.0: False)
    assert core.data.network.is_online() is False


def test_is_online_asks_every_host_at_the_same_time(monkeypatch):
    """Each connection waits until all hosts are being asked: only checks made in parallel get past that.

    Asked one after another, each host's check gives up (after timeout + 0.5 s) before the next one starts,
    so the first host's answer would come too late and the others refuse.
    """
    hosts = core.data.network.DOWNLOAD_HOSTS
    everyone_asked = threading.Barrier(len(hosts))

    class Conn:
        def close(self):
            pass

    def connect(address, timeout=None, **kwargs):
        try:
            everyone_asked.wait(timeout=10)
        except threading.BrokenBarrierError:
            raise OSError("not every host was asked") from None
        if address[0] != hosts[0]:
            raise ConnectionRefusedError("refused")
        return Conn()

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(core.data.network, "can_reach", real_can_reach)
    assert core.data.network.is_online(hosts, timeout=1.0) is True


def test_is_online_gives_up_on_hosts_that_hang(monkeypatch):
    release = threading.Event()
    asked: list[str] = []

    def hanging(address, timeout=None, **kwargs):
        asked.append(address[0])
        release.wait(60)  # DNS on a dead network: no answer, no error
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hanging)
    monkeypatch.setattr(core.data.network, "can_reach", real_can_reach)
    try:
        assert core.data.network.is_online(timeout=0.2) is False
        assert sorted(asked) == sorted(core.data.network.DOWNLOAD_HOSTS)
    finally:
        release.set()


def test_a_check_that_breaks_counts_as_offline(monkeypatch):
    def broken(host, port=443, timeout=3.0):
        raise RuntimeError("resolver crashed")

    monkeypatch.setattr(core.data.network, "can_reach", broken)
    assert core.data.network.is_online() is False
