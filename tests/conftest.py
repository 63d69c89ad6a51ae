"""Shared fixtures: generated data, a local SavedModel standing in for TF Hub, and isolated folders.

Nothing here downloads: the cache folder is a temporary one and the network check is forced offline
unless a test says otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from lab_helpers import TEST_IMAGE_SIZE, wait_for_estimates


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("lab-cache")
    os.environ["LAB_CACHE_DIR"] = str(cache)
    os.environ["TFHUB_CACHE_DIR"] = str(cache / "tfhub")
    os.environ["LAB_RUNS_DIR"] = str(tmp_path_factory.mktemp("default-runs"))
    # Pages in this process start no warm worker (each would import TensorFlow beside the suite); the
    # servers of the browser tests do, as a user's does, and tests/unit/training/test_warm_worker.py checks it.
    os.environ["LAB_WARM_WORKER"] = "0"
    # Pages here read the job board's files on every run, as the tests beside them do (a server's pages
    # share a read for a second: the browser tests' servers, and test_board.py, check that).
    os.environ["LAB_BOARD_READ_SECONDS"] = "0"
    yield cache


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test marked `alone` has the machine to itself, its fixtures' set-up included: it measures how a
    server answers a room, and a neighbouring test training on the same two cores would be measured with
    it. Every other test holds the machine shared, so the suite's processes take turns around it."""
    import fcntl
    import tempfile

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())  # the same in every worker of a run
    alone = item.get_closest_marker("alone") is not None
    with open(Path(tempfile.gettempdir()) / f"lab-tests-{run}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        yield


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """The machines have no internet; make the check instant and deterministic everywhere."""
    import core.data.network

    monkeypatch.setattr(core.data.network, "can_reach", lambda host, port=443, timeout=3.0: False)


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory) -> Path:
    """Two learnable classes (red circles, blue squares on noise), 60 images each."""
    from core.data.demo import make_demo_folder

    return make_demo_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=60, size=(80, 80))


@pytest.fixture(scope="session")
def demo_backbone(tmp_path_factory) -> Path:
    from core.data.demo import make_demo_backbone

    return make_demo_backbone(tmp_path_factory.mktemp("hub") / "backbone")


@pytest.fixture(scope="session")
def pretrained_demo(tmp_path_factory):
    """The generated demo as the Dataset page makes it: the scenes folder and the really pretrained
    backbone, both in the session's cache folder (pretrained once per run of the suite, about 1 minute).

    With the suite split over processes (pytest-xdist), the first one to get here pretrains it into their
    common folder and the others copy it into their own cache folders, as a cached demo.
    """
    import fcntl
    import shutil

    from core.models.demo_backbone import prepare_demo
    from core.settings.paths import cache_dir

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return prepare_demo()
    shared = tmp_path_factory.getbasetemp().parent / "shared-demo-cache"
    shared.mkdir(exist_ok=True)
    own = os.environ["LAB_CACHE_DIR"]
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            os.environ["LAB_CACHE_DIR"] = str(shared)
            prepare_demo()
        finally:
            os.environ["LAB_CACHE_DIR"] = own
    shutil.copytree(shared / "demo", cache_dir() / "demo", dirs_exist_ok=True)
    return prepare_demo()


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, demo_folder, demo_backbone) -> dict[str, Path]:
    """One finished run per model on the demo folder, shared by prediction, CLI and page tests."""
    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.training.experiment import run_experiment

    runs = tmp_path_factory.mktemp("runs")
    data = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=16)
    out = {}
    for kind, epochs, lr in ((ModelKind.BASELINE, 3, 1e-3), (ModelKind.TRANSFER, 8, 1e-2)):
        out[kind.value] = run_experiment(
            data, TrainConfig(model=kind, epochs=epochs, learning_rate=lr, handle=str(demo_backbone)), runs)
    out["dir"] = runs
    return out


@pytest.fixture
def open_page(monkeypatch, tmp_path):
    """Open one dashboard page headless (AppTest), with its own empty runs folder unless given one.

    open_page("dataset", state={...}, query={...}) runs the entry script with that session state and
    address, switches to app_pages/dataset.py and runs it; the AppTest is returned for clicking and inspecting.
    """
    from streamlit.testing.v1 import AppTest

    entry = Path(__file__).resolve().parents[1] / "streamlit_app.py"

    def open_(page: str = "home", runs_dir: Path | None = None, state: dict | None = None,
              query: dict | None = None) -> AppTest:
        monkeypatch.setenv("LAB_RUNS_DIR", str(runs_dir or tmp_path / "runs"))
        # Generous: a page's first run may import TensorFlow and time a few batches on a busy 2-core machine.
        at = AppTest.from_file(str(entry), default_timeout=180)
        for key, value in (state or {}).items():
            at.session_state[key] = value
        for key, value in (query or {}).items():  # the page's address, as after a reload or from a link
            at.query_params[key] = value
        at.run()
        if page != "home":
            at.switch_page(f"app_pages/{page}.py").run()
        if page == "experiments":
            wait_for_estimates(at)  # timed in a child process while the page is already drawn
        return at

    yield open_
    _drop_timings_nobody_waits_for()


def _drop_timings_nobody_waits_for() -> None:
    """The pages' estimates are timed one at a time per server, and this process is the server of every
    page a test opens. A test that changed a setting last (an image size, Article settings) leaves its
    timing queued or running when it ends: the next test's own timings would wait behind it, on a child
    process importing TensorFlow at low priority. Nobody waits for it any more, so it is dropped; finished
    timings stay shared, as a server shares them between its visitors."""
    import sys

    if "app_pages.parts.estimates" not in sys.modules:
        return
    import psutil

    from app_pages.parts.estimates import _timings

    _timings().cancel_pending()
    for child in psutil.Process().children():
        try:
            if "core.training.timing" in child.cmdline():
                child.kill()
        except psutil.NoSuchProcess:
            pass
