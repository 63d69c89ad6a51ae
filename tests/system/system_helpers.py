"""What the browser tests share: a `streamlit run` on a free port (hosted or not), waiting for a script run, screenshots."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from benchmarks.server import ARTIFACTS, start_server

SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 120_000  # first paints import TensorFlow and time a few batches on a 2-core machine


@contextlib.contextmanager
def hosted_server(runs: Path, demo_folder: Path, demo_backbone: Path, name: str):
    """A cloud-preset server with the demo data and backbone inside the Lab's cache, as uploads would be.

    Yields what a test needs to set a visitor up: the address, the runs folder, the source and the hub handle.
    """
    cache = Path(os.environ["LAB_CACHE_DIR"])
    data, handle = cache / "uploads" / f"{name}-shapes", cache / f"{name}-backbone"
    if not data.exists():
        shutil.copytree(demo_folder, data)
    if not handle.exists():
        shutil.copytree(demo_backbone, handle)
    with start_server(runs, {"LAB_PRESET": "cloud"}, name) as url:
        yield {"url": url, "runs": runs, "source": f"folder:{data}", "handle": str(handle)}


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


