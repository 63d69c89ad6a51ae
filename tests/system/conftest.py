"""Fixtures of the browser tests."""
from __future__ import annotations

from pathlib import Path

import pytest
from system_helpers import CHROMIUM


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module: Playwright's sync API allows one running instance per thread."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (./lab test does) to run the browser test.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        chromium.close()
