"""The Room page in a real browser: what one participant trains appears on another's open Room page, no reload."""
from __future__ import annotations

import re

import pytest
from system_helpers import SCREENSHOTS, TIMEOUT_MS, settle, shoot, start_server

from core.settings.choices import new_token, save_choices

pytestmark = pytest.mark.browser

NAME = "Ana <b>team</b>"
PICKED = re.compile(r"^Ana <b>team</b> · \d+\.\d% · Transfer \(backbone\) · shapes$")


def picked(tab) -> list[str]:
    """The Room page's model picker as shown: its label and chosen option, line by line."""
    box = tab.get_by_test_id("stSelectbox").first
    box.wait_for()
    values = [field.input_value() for field in box.locator("input").all()]
    return [line.strip() for line in box.inner_text().splitlines() + values if line.strip()]


def test_a_model_trained_in_one_session_appears_on_anothers_open_room_page(browser, tmp_path, demo_folder,
                                                                        demo_backbone):
    trainer, watcher = new_token(), new_token()
    save_choices(trainer, {"lab_source": f"folder:{demo_folder}", "lab_handle": str(demo_backbone),
                           "exp_t_handle": str(demo_backbone), "exp_image_size": 64, "exp_t_batch": 16,
                           "exp_t_limit": 48, "exp_t_epochs": 1})
    save_choices(watcher, {"lab_issued_at": 1})
    contexts = []
    with start_server(tmp_path / "runs", {"LAB_PRESET": "local"}, "room-view") as url:
        try:
            desk = browser.new_context(viewport={"width": 1280, "height": 900})
            phone = browser.new_context(viewport={"width": 390, "height": 844})
            contexts += [desk, phone]
            a, b = desk.new_page(), phone.new_page()
            for tab in (a, b):
                tab.set_default_timeout(TIMEOUT_MS)
            b.goto(f"{url}/room?s={watcher}")
            b.get_by_text("No models in the room yet").wait_for()

            a.goto(f"{url}/room?s={trainer}")
            field = a.get_by_role("textbox", name="Your name in the room")
            field.fill(NAME)
            field.press("Enter")
            settle(a)
            a.goto(f"{url}/experiments?s={trainer}")
            run = a.locator(".st-key-run_mobilenet_v2 button")
            run.wait_for()
            a.wait_for_function("b => !b.disabled", arg=run.element_handle(), timeout=TIMEOUT_MS)
            run.click()
            a.get_by_text(re.compile(r"Finished: 1 run\(s\) saved")).first.wait_for(timeout=3 * TIMEOUT_MS)

            # The watcher's page was never reloaded: its live part redraws every few seconds.
            b.get_by_text("1 participant, 1 model.").wait_for(timeout=30_000)
            assert any(map(PICKED.match, picked(b))), picked(b)
            assert b.get_by_test_id("stException").count() == 0
            assert b.locator("b", has_text="team").count() == 0  # the name is text, not markup
            settle(b)
            shoot(b, "room-view-phone")

            a.goto(f"{url}/room?s={trainer}")
            a.get_by_text("1 participant, 1 model.").wait_for()
            assert any(map(PICKED.match, picked(a))), picked(a)
            assert a.get_by_role("textbox", name="Your name in the room").input_value() == NAME
            settle(a)
            shoot(a, "room-view-desktop")
            a.get_by_role("button", name=re.compile("Open it on Predict")).click()
            a.get_by_role("heading", name="Predict").wait_for()
            assert "/predict" in a.url

            b.goto(f"{url}/?s={watcher}")  # Home is the default page: its address is the app's
            b.get_by_text("Join this room").click()
            link = b.get_by_test_id("stCode").first
            link.wait_for()
            assert link.inner_text().strip() == f"{url}/"  # the server's address, not the session's
            assert watcher not in b.get_by_test_id("stExpander").first.inner_text()
            settle(b)
            shoot(b, "room-join-phone")
        finally:
            for i, context in enumerate(contexts):
                for tab in context.pages:
                    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                    tab.screenshot(path=str(SCREENSHOTS / f"room-view-last-{i}.png"), full_page=True)
                context.close()
