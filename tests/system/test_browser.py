"""The dashboard in a real browser: `streamlit run` on a free port, every page in headless Chromium.

One screenshot per page lands in test-artifacts/screenshots/ (with the server's log next to it) so a
person can look at what the pages really look like.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 120_000  # first paints import TensorFlow and time a few batches on a 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_runs, _isolated_cache):
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    env = dict(os.environ, LAB_RUNS_DIR=str(trained_runs["dir"]), PYTHONUNBUFFERED="1")
    with open(ARTIFACTS / "streamlit-server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until_healthy(url: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"streamlit did not start; see {ARTIFACTS / 'streamlit-server.log'}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def browser(server):
    """One Chromium for the module: Playwright's sync API allows one running instance per thread."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (./lab test does) to run the browser test.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser):
    tab = browser.new_page(viewport={"width": 1440, "height": 900})
    tab.set_default_timeout(TIMEOUT_MS)
    return tab


def settle(tab) -> None:
    """Wait until the script run is over: Streamlit shows a running indicator while it executes."""
    tab.wait_for_timeout(500)
    tab.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=TIMEOUT_MS)
    tab.wait_for_timeout(800)  # plotly draws after the run ends


def shoot(tab, name: str) -> Path:
    """Screenshot the whole page: Streamlit scrolls inside its main block, so grow the viewport to fit it."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    viewport = tab.viewport_size
    height = tab.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
    tab.set_viewport_size({"width": viewport["width"], "height": max(viewport["height"], min(int(height), 8000))})
    tab.wait_for_timeout(800)  # charts redraw for the new size
    tab.screenshot(path=str(path), full_page=True)
    tab.set_viewport_size(viewport)
    return path


def go(tab, title: str, heading: str | None = None) -> None:
    """Follow the sidebar link named title, in the same session, and wait for the page's heading."""
    tab.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    tab.get_by_role("heading", name=heading or title, exact=True).first.wait_for()
    settle(tab)


def no_exception(tab) -> None:
    assert tab.get_by_test_id("stException").count() == 0, tab.get_by_test_id("stException").first.inner_text()


def test_every_page_in_chromium(page, server, demo_folder, trained_runs):
    from core.runs.predict import load_for_prediction, predict_bytes

    # A deep link as the server's very first request still goes through the entry script's navigation.
    page.goto(f"{server}/predict")
    page.get_by_role("heading", name="Predict", exact=True).first.wait_for()
    settle(page)
    nav = page.get_by_test_id("stSidebarNav").inner_text()
    assert all(title in nav for title in ("Home", "Dataset", "Experiments", "Predict"))
    assert "common" not in nav and "streamlit app" not in nav
    assert "Lab status" in page.get_by_test_id("stSidebar").inner_text()

    go(page, "Home", heading="Transfer Learning Lab")
    assert page.get_by_text("Start here").count() == 1
    no_exception(page)
    shoot(page, "1-home")

    go(page, "Dataset")
    page.get_by_text("A folder on this machine").click()
    field = page.get_by_label("Folder path")
    field.fill(str(demo_folder))
    field.press("Enter")
    settle(page)
    page.get_by_role("button", name="Load dataset").click()
    page.get_by_test_id("stImage").nth(15).wait_for()
    settle(page)
    assert page.get_by_test_id("stImage").count() >= 16
    assert page.locator(".js-plotly-plot").count() >= 2
    assert str(demo_folder) in page.get_by_test_id("stSidebar").inner_text()
    no_exception(page)
    shoot(page, "2-dataset")

    go(page, "Experiments")
    page.get_by_text("Estimated duration").first.wait_for()
    page.get_by_role("heading", name="Comparison").wait_for()
    page.get_by_role("heading", name="Evaluation on the validation split").wait_for()
    settle(page)
    assert page.locator(".js-plotly-plot").count() >= 4  # two curves and a confusion matrix per run
    assert page.get_by_role("button", name="Prepare TFLite float32").count() == 2
    no_exception(page)
    shoot(page, "3-experiments")

    go(page, "Predict")
    page.get_by_text("Loaded from disk").or_(page.get_by_text("Reused from the shared cache")).first.wait_for()
    image = next((demo_folder / "circles").iterdir())
    expected = predict_bytes(load_for_prediction(trained_runs["mobilenet_v2"]), [(image.name, image.read_bytes())])[0]
    page.locator("input[type=file]").first.set_input_files(str(image))
    page.get_by_role("heading", name=expected.label, exact=True).wait_for()
    settle(page)
    assert page.get_by_text(f"{expected.confidence:.1%} confident").count() == 1
    no_exception(page)
    shoot(page, "4-predict")

    page.get_by_role("button", name="Explain").click()
    page.get_by_text("Red: hiding this part", exact=False).wait_for()
    settle(page)
    assert page.locator(".js-plotly-plot").count() == 2  # the probabilities and the heatmap
    no_exception(page)
    shoot(page, "5-predict-explained")


def test_predict_on_a_phone(browser, server, demo_folder, trained_runs):
    """A 390-px phone screen: the sidebar starts collapsed, the camera comes before the uploader and the verdict
    before the picture, and nothing is wider than the screen. The screenshot is 6-predict-phone.png."""
    from core.runs.predict import load_for_prediction, predict_bytes

    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    try:
        phone = context.new_page()
        phone.set_default_timeout(TIMEOUT_MS)
        phone.goto(f"{server}/predict")
        phone.get_by_text("Loaded from disk").or_(phone.get_by_text("Reused from the shared cache")).first.wait_for()
        settle(phone)
        assert phone.get_by_test_id("stSidebar").get_attribute("data-collapsed") == "true"
        camera = phone.get_by_text("Take a photo with the camera").bounding_box()
        uploader = phone.get_by_test_id("stFileUploader").bounding_box()
        assert camera["y"] < uploader["y"]
        image = next((demo_folder / "squares").iterdir())
        expected = predict_bytes(load_for_prediction(trained_runs["mobilenet_v2"]),
                                 [(image.name, image.read_bytes())])[0]
        phone.locator("input[type=file]").first.set_input_files(str(image))
        verdict = phone.get_by_role("heading", name=expected.label, exact=True)
        verdict.wait_for()
        settle(phone)
        no_exception(phone)
        picture = phone.get_by_test_id("stImage").last.bounding_box()
        assert verdict.bounding_box()["y"] < picture["y"]
        assert picture["width"] <= 390
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        shoot(phone, "6-predict-phone")
    finally:
        context.close()
