"""Shared fixtures: generated data, a local SavedModel standing in for TF Hub, and isolated folders.

Nothing here downloads: the cache folder is a temporary one and the network check is forced offline
unless a test says otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

TEST_IMAGE_SIZE = 64  # small images keep the suite fast; the article's 224 is exercised in shape tests


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("lab-cache")
    os.environ["LAB_CACHE_DIR"] = str(cache)
    os.environ["TFHUB_CACHE_DIR"] = str(cache / "tfhub")
    os.environ["LAB_RUNS_DIR"] = str(tmp_path_factory.mktemp("default-runs"))
    yield cache


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
def trained_runs(tmp_path_factory, demo_folder, demo_backbone) -> dict[str, Path]:
    """One finished run per model on the demo folder, shared by prediction, CLI and page tests."""
    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.training.experiment import run_experiment

    runs = tmp_path_factory.mktemp("runs")
    data = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=16)
    out = {}
    for kind, epochs, lr in ((ModelKind.BASELINE, 3, 1e-3), (ModelKind.MOBILENET_V2, 8, 1e-2)):
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
        return at

    return open_


JOB_WAIT_SECONDS = 300  # bound on a tiny background run on a busy 2-core machine; waits end as soon as it is done


def followed_job(at):
    """The board's view of the job an Experiments page session follows (its latest)."""
    from core.training.board import Board

    following = at.session_state["exp_following"]
    assert following, "the session follows no training"
    return Board(os.environ["LAB_RUNS_DIR"]).view(following[-1])


def wait_for_job(at, seconds: float = JOB_WAIT_SECONDS, rerun_while_waiting: bool = False):
    """Wait for the job an Experiments page session follows, then rerun the page once; its final snapshot.

    The job trains in a worker process; rerun_while_waiting also reruns the page on every poll, as a
    browser's live panel would.
    """
    import time

    deadline = time.monotonic() + seconds
    while not (view := followed_job(at)).finished:
        assert time.monotonic() < deadline, f"the job did not finish: {view.snapshot}"
        time.sleep(0.3)
        if rerun_while_waiting:
            at.run()
    at.run()
    return followed_job(at).snapshot


def wait_for_epoch(at, epochs: int = 1, seconds: float = JOB_WAIT_SECONDS):
    """Wait until the followed job has finished this many epochs of its current experiment."""
    import time

    deadline = time.monotonic() + seconds
    while (view := followed_job(at)).snapshot.epoch < epochs:
        assert time.monotonic() < deadline and not view.finished, view.snapshot
        time.sleep(0.2)
    return view


def make_zip(entries: dict[str, bytes]) -> bytes:
    """A deflated zip holding name -> bytes, for the zip-handling tests."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()
