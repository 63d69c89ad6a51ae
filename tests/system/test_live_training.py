"""Trainings as people meet them in a real browser: watched, reloaded, shared, queued, stopped, killed.

One `streamlit run` on the hosted ("cloud") preset, which trains one job at a time, and several Chromium
contexts (separate visitors). Each visitor's settings are put where a reload finds them (the session
key in the address), so the test starts where a visitor who loaded the demo data would be.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from system_helpers import SCREENSHOTS, TIMEOUT_MS, hosted_server, settle, shoot

from core.settings.choices import new_token, save_choices

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def hosted(tmp_path_factory, demo_folder, demo_backbone, _isolated_cache):
    """A cloud-preset server with the demo data and backbone inside the Lab's cache, as uploads would be."""
    with hosted_server(tmp_path_factory.mktemp("live-runs"), demo_folder, demo_backbone, "live") as server:
        yield server


def visitor(browser, hosted, **settings):
    """A new visitor (own browser context) whose saved choices are the demo data and these settings."""
    token = new_token()
    save_choices(token, {"lab_source": hosted["source"], "lab_handle": hosted["handle"], "exp_t_handle":
                         hosted["handle"], "exp_image_size": 128, "exp_b_batch": 16, "exp_t_batch": 16,
                         "exp_b_limit": 96, "exp_t_limit": 96, **settings})
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.set_default_navigation_timeout(3 * TIMEOUT_MS)  # the first paint waits for a server busy training
    tab.goto(f"{hosted['url']}/experiments?s={token}")
    tab.get_by_role("heading", name="Experiments", exact=True).first.wait_for()
    # The Run buttons come after the estimates, which time a few batches while another training runs.
    tab.get_by_role("button", name=re.compile("^Run both")).wait_for(timeout=3 * TIMEOUT_MS)
    settle(tab)
    return tab


# A training long enough to be watched, reloaded, joined, queued behind and stopped, within the hosted
# preset's caps (20 epochs, 10 minutes by its estimate): augmented images in small batches make each epoch slow.
LONG = {"exp_b_epochs": 20, "exp_image_size": 160, "exp_b_batch": 4, "exp_b_augment": True}


def card(tab, text: str):
    return tab.get_by_text(text, exact=False).first


def job_ids(runs: Path) -> list[str]:
    return sorted(p.name for p in (runs / ".jobs").iterdir() if p.is_dir() and not p.name.startswith("."))


def no_exception(tab) -> None:
    assert tab.get_by_test_id("stException").count() == 0, tab.get_by_test_id("stException").first.inner_text()


@pytest.fixture
def tabs():
    """The test's browser tabs by name; each is photographed if the test fails, to show what a person saw."""
    opened: dict = {}
    yield opened
    for name, tab in opened.items():
        if not tab.is_closed():
            tab.screenshot(path=str(SCREENSHOTS / f"live-last-{name}.png"), full_page=True)
            tab.context.close()  # its page stops polling the server, which the next test shares


def test_watch_reload_share_queue_stop_and_a_killed_worker(browser, hosted, tabs):
    runs = hosted["runs"]
    alice = tabs["alice"] = visitor(browser, hosted, **LONG, exp_seed=1)
    alice.get_by_role("button", name="Run Baseline CNN").click()
    card(alice, "Baseline CNN · yours").wait_for()
    alice.get_by_text(re.compile(r"Epochs done: [1-9]")).wait_for()  # the live panel follows the epochs
    alice.locator("[data-testid=stPlotlyChart]").first.wait_for()
    no_exception(alice)
    shoot(alice, "live-1-training")

    # A reload finds the training, its Stop button and the visitor's settings.
    alice.reload()
    card(alice, "Baseline CNN · yours").wait_for()
    (alice_job,) = job_ids(runs)
    alice.get_by_role("button", name="Stop").wait_for()
    settle(alice)
    # The settings below the panel come back from the session's saved choices once the page has rerun.
    alice.wait_for_function("() => [...document.querySelectorAll(\"input[aria-label='Epochs']\")]"
                            ".some(e => e.value === '20')")
    assert alice.get_by_role("button", name="Run Baseline CNN").is_disabled()
    shoot(alice, "live-2-after-reload")

    # Another visitor with the same experiment joins the running job instead of training it again.
    carol = tabs["carol"] = visitor(browser, hosted, **LONG, exp_seed=1)
    card(carol, "Baseline CNN · another visitor's").wait_for()
    assert carol.get_by_role("button", name="Stop").count() == 0  # not hers to stop on a hosted Lab
    carol.get_by_role("button", name="Run Baseline CNN").click()
    carol.get_by_text("following it, so it trains once").wait_for()
    assert job_ids(runs) == [alice_job]

    # A third with another seed waits in line, with its place shown.
    bob = tabs["bob"] = visitor(browser, hosted, **LONG, exp_seed=2)
    bob.get_by_role("button", name="Run Baseline CNN").click()
    bob.get_by_text(re.compile(r"Waiting: 1st in line")).wait_for()
    no_exception(bob)
    settle(bob)
    shoot(bob, "live-3-queued")
    bob_job = next(j for j in job_ids(runs) if j != alice_job)

    # A shared link shows the training to anyone.
    stranger = tabs["stranger"] = browser.new_context().new_page()
    stranger.set_default_timeout(TIMEOUT_MS)
    stranger.goto(f"{hosted['url']}/experiments?job={alice_job}")
    card(stranger, "Baseline CNN · another visitor's").wait_for(timeout=TIMEOUT_MS)

    # Stop: "Stopping" at once, the finished epochs kept as a run; then the queue moves on.
    alice.get_by_role("button", name="Stop").click()
    # "Stopping ..." while the worker finishes its batch and saves; on a quick machine that may already be over.
    alice.get_by_text(re.compile(r"Stopping after the current batch|Stopped after \d+ epoch")).first.wait_for()
    assert (runs / ".jobs" / alice_job / "stop").exists()
    alice.get_by_text(re.compile(r"Stopped after \d+ epoch")).wait_for()
    status = json.loads((runs / ".jobs" / alice_job / "status.json").read_text())
    assert status["phase"] == "stopped" and len(status["run_dirs"]) == 1
    shoot(alice, "live-4-stopped")
    # The queue moves on: the next in line gets a worker of its own.
    launch = runs / ".jobs" / bob_job / "launch.json"
    deadline = time.monotonic() + 180
    while not (launch.exists() and json.loads(launch.read_text()).get("pid")):
        assert time.monotonic() < deadline, "the queued job never started"
        time.sleep(0.5)

    # The worker dies (as an out-of-memory kill would): the visitor sees one line, the server serves on.
    pid = json.loads(launch.read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while _phase(runs, bob_job) != "failed":
        assert time.monotonic() < deadline, "the killed worker was not noticed"
        time.sleep(0.5)
    bob.reload()
    bob.get_by_text("killed by SIGKILL").first.wait_for()
    no_exception(bob)
    shoot(bob, "live-5-worker-killed")
    bob.get_by_test_id("stSidebarNav").get_by_text("Home", exact=True).click()
    bob.get_by_role("heading", name="Transfer Learning Lab").first.wait_for()
    assert not [p for p in runs.iterdir() if p.name.startswith(".incomplete-") and (p / "owner.pid").exists()
                and _alive(int((p / "owner.pid").read_text()))]


def _phase(runs: Path, job_id: str) -> str | None:
    status = runs / ".jobs" / job_id / "status.json"
    return json.loads(status.read_text())["phase"] if status.exists() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_from_the_command_line_run_is_shown_and_honoured(browser, hosted, demo_folder):
    """A training started on the command line is listed for every visitor, and a stop request reaches it."""
    runs = hosted["runs"]
    env = dict(os.environ, LAB_PRESET="cloud")
    cli = subprocess.Popen([sys.executable, "-m", "core", "train", "--model", "baseline", "--data",
                            hosted["source"], "--image-size", "128", "--epochs", "500", "--batch-size", "16",
                            "--limit", "96", "--runs-dir", str(runs)], cwd=Path(__file__).resolve().parents[2],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        watcher = visitor(browser, hosted)
        card(watcher, "Baseline CNN · from the command line").wait_for()
        shoot(watcher, "live-6-cli-job")
        cli_job = next(p for p in (runs / ".jobs").iterdir() if (p / "spec.json").exists()
                       and json.loads((p / "spec.json").read_text())["origin"] == "cli")
        deadline = time.monotonic() + 180  # an epoch finished first, so the stop keeps it as a run
        while json.loads((cli_job / "status.json").read_text())["epoch"] < 1:
            assert time.monotonic() < deadline and cli.poll() is None, "the command line run made no epoch"
            time.sleep(0.2)
        (cli_job / "stop").touch()  # what a page's Stop does where the preset allows it
        out, err = cli.communicate(timeout=300)
        assert cli.returncode == 0, err[-2000:]
        run_dir = Path(out.strip().splitlines()[-1])
        assert json.loads((run_dir / "metrics.json").read_text())["stopped_early"] is True
    finally:
        if cli.poll() is None:
            cli.kill()
