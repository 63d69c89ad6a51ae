"""A workshop room in a real browser: eight visitors of one hosted-preset server press Run both together.

Every visitor must see its own result as soon as its job ends, with its runs on its charts, while the
server keeps answering its health check; identical experiments train once.
"""
from __future__ import annotations

import re
import time

import pytest
from system_helpers import SCREENSHOTS, TIMEOUT_MS, hosted_server, settle, shoot

from benchmarks.room import Sampler
from core.settings.choices import new_token, save_choices

pytestmark = [pytest.mark.browser, pytest.mark.alone]  # its health check is the server's, not a neighbour's

ROOM = 8
HEALTH_LIMIT_S = 3.0


@pytest.fixture(scope="module")
def room_server(tmp_path_factory, demo_folder, demo_backbone, _isolated_cache):
    with hosted_server(tmp_path_factory.mktemp("room-runs"), demo_folder, demo_backbone, "room") as server:
        yield server


def test_a_room_of_eight_each_sees_its_result_while_the_server_answers(browser, room_server):
    tabs = []
    try:
        with Sampler(room_server["url"], server_pid=None) as probe:  # health checks, twice a second
            for i in range(ROOM):
                token = new_token()
                # Two experiments in the room (two seeds), as a workshop where half changed the seed.
                save_choices(token, {"lab_source": room_server["source"], "lab_handle": room_server["handle"],
                                     "exp_t_handle": room_server["handle"], "exp_image_size": 64, "exp_b_batch": 16,
                                     "exp_t_batch": 16, "exp_b_limit": 48, "exp_t_limit": 48, "exp_b_epochs": 1,
                                     "exp_t_epochs": 1, "exp_seed": 1 + i % 2})
                context = browser.new_context(viewport={"width": 390, "height": 844} if i % 4 == 3
                                              else {"width": 1280, "height": 900})
                tab = context.new_page()
                tab.set_default_timeout(3 * TIMEOUT_MS)
                tab.goto(f"{room_server['url']}/experiments?s={token}")
                tabs.append(tab)
            for tab in tabs:
                # A hosted Lab caps a training's length by its estimate: Run both waits for it, and says so.
                tab.get_by_role("button", name=re.compile(r"^Run both \(about")).wait_for()
                settle(tab)
            clicked = time.monotonic()
            for tab in tabs:
                tab.get_by_role("button", name=re.compile("^Run both")).click()
            for i, tab in enumerate(tabs):
                tab.get_by_text(re.compile(r"Finished: 2 run\(s\) saved|trained here already")).first.wait_for(
                    timeout=6 * TIMEOUT_MS)
                settle(tab)
                assert tab.get_by_test_id("stException").count() == 0, f"visitor {i}"
                assert tab.get_by_text("No runs selected").count() == 0, f"visitor {i}: its runs are not on the charts"
                # Both of its runs, the transfer model's (delivered first) and the baseline's, are on its charts.
                picker = tab.get_by_test_id("stMultiSelect").first
                for model in ("Transfer (room-backbone) · ", "Baseline CNN · "):
                    picker.get_by_text(model).first.wait_for(timeout=30_000)
                assert tab.get_by_text("Something went wrong").count() == 0, f"visitor {i}"
            waited = time.monotonic() - clicked
            shoot(tabs[0], "room-desktop")
            shoot(tabs[3], "room-phone")
    finally:
        for i, tab in enumerate(tabs):
            if not tab.is_closed():
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                tab.screenshot(path=str(SCREENSHOTS / f"room-last-{i}.png"), full_page=True)
                tab.context.close()
    jobs = [p for p in (room_server["runs"] / ".jobs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(jobs) == 2, "identical experiments train once: two seeds, two jobs"
    worst = max(took for _, took in probe.health)
    assert worst < HEALTH_LIMIT_S, f"the health check took {worst:.1f} s with the room waiting ({waited:.0f} s)"
