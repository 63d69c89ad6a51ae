"""Data efficiency page: both models' accuracy by images per class, on the session's dataset and handle."""
from __future__ import annotations

import json


def test_measures_and_draws_both_models_by_images_per_class(open_page, demo_folder, demo_backbone):
    at = open_page("data_efficiency", state={"lab_source": f"folder:{demo_folder}", "lab_handle": str(demo_backbone)})
    assert not at.exception and not at.error
    assert not at.get("plotly_chart")  # nothing is trained until asked
    at.text_input[0].set_value("2, 4")
    at.number_input[0].set_value(48)
    at.number_input[1].set_value(1)
    at.button[0].click().run()
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
