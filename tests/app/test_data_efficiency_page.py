"""Data efficiency page: both models' accuracy by images per class, on the session's dataset and handle,
measured as a job of the board (never in the page's own script run)."""
from __future__ import annotations

import json
import os

from lab_helpers import followed_job, wait_for_job


def test_measures_and_draws_both_models_by_images_per_class(open_page, demo_folder, demo_backbone):
    at = open_page("data_efficiency", state={"lab_source": f"folder:{demo_folder}", "lab_handle": str(demo_backbone)})
    assert not at.exception and not at.error
    assert not at.get("plotly_chart")  # nothing is trained until asked
    at.text_input[0].set_value("2, 4")
    at.number_input[0].set_value(48)
    at.number_input[1].set_value(1)
    at.button[0].click().run()
    assert not at.exception and not at.error
    view = followed_job(at)
    assert view.title == "Data efficiency (2, 4 images per class)"
    status = view.path / "status.json"
    final = wait_for_job(at)
    assert final.phase == "done" and final.run_dirs == ()  # measured, no run saved
    assert json.loads(status.read_text())["pid"] != os.getpid()  # in a worker process, not the page's
    assert not at.exception and not at.error
    [chart] = at.get("plotly_chart")
    spec = json.loads(chart.proto.spec)
    assert [t["name"] for t in spec["data"]] == ["Baseline CNN", "Transfer (backbone)"]
    assert [t["x"] for t in spec["data"]] == [[2, 4], [2, 4]]
    table = at.table[0].value
    assert list(table.columns) == ["Baseline CNN", "Transfer (backbone)"]
    assert list(table.index) == ["2 per class", "4 per class"]
    assert all(str(cell).endswith("%") for cell in table.to_numpy().ravel())


def test_counts_that_are_not_numbers_get_one_error_line(open_page, demo_folder, demo_backbone):
    at = open_page("data_efficiency", state={"lab_source": f"folder:{demo_folder}", "lab_handle": str(demo_backbone)})
    at.text_input[0].set_value("five, ten")
    at.button[0].click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Give the counts as whole numbers separated by commas, e.g. 5, 10, 20."]


def test_a_reload_finds_the_measurement_and_the_same_one_asked_twice_is_joined(open_page, demo_folder, demo_backbone):
    state = {"lab_source": f"folder:{demo_folder}", "lab_handle": str(demo_backbone)}
    first = open_page("data_efficiency", state=state)
    first.text_input[0].set_value("3")
    first.number_input[0].set_value(48)
    first.number_input[1].set_value(1)
    first.button[0].click().run()
    job = followed_job(first).job_id
    second = open_page("data_efficiency", state=state)  # another visitor, the same settings
    second.text_input[0].set_value("3")
    second.number_input[0].set_value(48)
    second.number_input[1].set_value(1)
    second.button[0].click().run()
    assert followed_job(second).job_id == job
    wait_for_job(first)
    # A new tab of the first session (its kept choices name the job) draws the result without measuring again.
    again = open_page("data_efficiency", state={**state, "exp_efficiency_job": job})
    assert not again.exception
    [chart] = again.get("plotly_chart")
    assert [t["x"] for t in json.loads(chart.proto.spec)["data"]] == [[3], [3]]
