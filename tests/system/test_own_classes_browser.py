"""Your classes in Chromium on a 390-px phone: name two classes, fill them by upload and by the (fake) camera,
train, read the validation accuracy, then Try it opens Predict with the camera first. A desktop look too.

Chromium's fake capture device stands in for a phone's camera. The time from pressing Train to the
accuracy on screen is written to test-artifacts/own-classes-train.json (measured, never asserted).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from system_helpers import CHROMIUM, SCREENSHOTS, TIMEOUT_MS, settle, shoot, start_server

from benchmarks.server import ARTIFACTS
from core.settings.choices import new_token, save_choices

pytestmark = pytest.mark.browser

PER_CLASS = 15
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def camera_browser():
    """A Chromium of this module's own whose camera is the fake capture device, allowed without asking."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (./lab test does) to run the browser test.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_backbone, _isolated_cache):
    handle = Path(os.environ["LAB_CACHE_DIR"]) / "own-backbone"
    if not handle.exists():
        shutil.copytree(demo_backbone, handle)
    with start_server(tmp_path_factory.mktemp("own-runs"), {}, "own-classes") as url:
        yield {"url": url, "handle": str(handle)}


def photos(prefix: str, colour: tuple[int, int, int], count: int) -> list[dict]:
    """Distinct noisy PNGs leaning to one colour, as Playwright hands files to an input."""
    rng = np.random.default_rng(sum(colour))
    out = []
    for i in range(count):
        pixels = np.clip(rng.normal(colour, 40, (120, 160, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        out.append({"name": f"{prefix}-{i}.png", "mimeType": "image/png", "buffer": buffer.getvalue()})
    return out


def no_exception(tab) -> None:
    assert tab.get_by_test_id("stException").count() == 0, tab.get_by_test_id("stException").first.inner_text()


def add_class(tab, name: str) -> None:
    tab.get_by_label("New class").fill(name)
    tab.get_by_role("button", name=re.compile("Add class")).click()
    tab.get_by_test_id("stButtonGroup").get_by_text(name, exact=True).wait_for()
    settle(tab)


def choose(tab, name: str) -> None:
    tab.get_by_test_id("stButtonGroup").get_by_text(name, exact=True).click()
    tab.get_by_text(f"Show {name} to the camera").wait_for()
    settle(tab)


def upload(tab, name: str, files: list[dict]) -> None:
    tab.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(files)
    tab.get_by_text(f"Added {len(files)} images to {name}").wait_for()
    settle(tab)


def test_a_phone_teaches_two_classes_trains_and_tries_the_model(camera_browser, server):
    token = new_token()
    save_choices(token, {"lab_handle": server["handle"]})
    context = camera_browser.new_context(viewport=PHONE, permissions=["camera"])
    phone = context.new_page()
    phone.set_default_timeout(TIMEOUT_MS)
    try:
        phone.goto(f"{server['url']}/your-classes?s={token}")
        phone.get_by_role("heading", name="Your classes").wait_for()
        settle(phone)
        add_class(phone, "mug")
        add_class(phone, "pen")
        choose(phone, "mug")
        # The camera: one snapshot, then a fresh camera for the next, without leaving the class.
        for taken in (1, 2):
            camera = phone.get_by_test_id("stCameraInput")
            # A fresh camera takes a moment to stream; a snapshot before that is an empty one, not added.
            phone.wait_for_function("() => { const v = document.querySelector('[data-testid=stCameraInput] video');"
                                    " return v && v.readyState >= 2 && v.videoWidth > 0; }")
            camera.get_by_role("button", name=re.compile("Take photo", re.IGNORECASE)).click(timeout=30_000)
            phone.get_by_text(f"{taken} of 30 images").wait_for()
            settle(phone)
        upload(phone, "mug", photos("mug", (200, 60, 50), PER_CLASS - 2))
        choose(phone, "pen")
        upload(phone, "pen", photos("pen", (50, 70, 200), PER_CLASS))
        phone.get_by_text(f"{PER_CLASS} of 30 images").wait_for()
        no_exception(phone)
        shoot(phone, "own-classes-phone")

        started = time.monotonic()
        phone.get_by_role("button", name=re.compile("^Train")).click()
        phone.get_by_text(re.compile("validation accuracy")).first.wait_for(timeout=3 * TIMEOUT_MS)
        seconds = time.monotonic() - started
        settle(phone)
        no_exception(phone)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "own-classes-train.json").write_text(json.dumps(
            {"train_to_accuracy_seconds": round(seconds, 1), "images_per_class": PER_CLASS, "classes": 2}))
        shoot(phone, "own-classes-phone-result")

        desktop = context.browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        desktop.set_default_timeout(TIMEOUT_MS)
        desktop.goto(f"{server['url']}/your-classes?s={token}")  # the same session: its classes and result
        desktop.get_by_text(re.compile("validation accuracy")).first.wait_for()
        settle(desktop)
        no_exception(desktop)
        shoot(desktop, "own-classes-desktop")
        desktop.context.close()

        phone.get_by_role("button", name=re.compile("Try it")).click()
        phone.get_by_role("heading", name="Predict").wait_for()
        settle(phone)
        no_exception(phone)
        phone.get_by_test_id("stCameraInput").wait_for()  # the camera is on, first
        assert phone.get_by_text("mug, pen").count() >= 1  # the run just trained is the one chosen
        shoot(phone, "own-classes-try-it")
    finally:
        if not phone.is_closed():
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            phone.screenshot(path=str(SCREENSHOTS / "own-classes-last.png"), full_page=True)
        context.close()
