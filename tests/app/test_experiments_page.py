"""The Experiments page: estimates, presets, a tiny background run to the end, stop, run history."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import JOB_WAIT_SECONDS, TEST_IMAGE_SIZE, wait_for_job


@pytest.fixture
def tiny_state(demo_folder, demo_backbone) -> dict:
    """Session state for a tiny experiment: generated folder, local SavedModel handle, 64x64, 2 epochs."""
    return {
        "lab_source": f"folder:{demo_folder}", "lab_handle": str(demo_backbone), "exp_image_size": TEST_IMAGE_SIZE,
        "exp_b_epochs": 2, "exp_t_epochs": 2, "exp_b_batch": 16, "exp_t_batch": 16, "exp_t_lr": 0.01,
    }


def chart_specs(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def trace_names(spec: dict) -> set[str]:
    return {trace.get("name") for trace in spec["data"]}


def test_estimates_are_shown_before_any_run(open_page, tiny_state):
    at = open_page("experiments", state=tiny_state)
    assert not at.exception
    assert not at.error
    estimates = [m.value for m in at.markdown if m.value.startswith("**Estimated duration")]
    assert len(estimates) == 2
    details = [c.value for c in at.caption if "validation images" in c.value]
    assert len(details) == 2
    assert all("96 training and 24 validation images" in d for d in details)
    assert "features" in details[1]  # the transfer model computes its backbone features once
    assert "Run both (about" in at.button(key="run_both").label


def test_tiny_experiment_trains_in_the_background_and_ends_with_charts_and_a_table(open_page, tiny_state,
                                                                                   tmp_path):
    at = open_page("experiments", state=tiny_state)
    at.button(key="run_both").click().run()
    assert not at.exception
    job = at.session_state["exp_job"]
    if not job.snapshot().finished:
        assert at.get("progress"), "a running job shows a progress bar"
        assert any(b.label == "Stop" for b in at.button)
        assert at.button(key="run_both").disabled  # a second click cannot start another run meanwhile
    snap = wait_for_job(at, rerun_while_waiting=True)
    assert snap.phase == "done", snap.message
    assert not at.exception
    assert [s.value for s in at.success] == [snap.message]
    # Both runs were written as complete run folders and are the ones on the charts.
    run_ids = [p.name for p in snap.run_dirs]
    assert len(run_ids) == 2 and all((tmp_path / "runs" / r / "model.h5").is_file() for r in run_ids)
    assert at.multiselect[0].value == run_ids
    accuracy, loss = chart_specs(at)[:2]  # the curves come first, the runs' confusion matrices later
    names = trace_names(accuracy)
    # The runs are named after their own backbone (the test's, a folder named "backbone"), the article's as its.
    assert {"Baseline CNN", "Transfer (backbone)"} <= names and "MobileNetV2 transfer" not in names
    assert {"Article: Baseline CNN", "Article: MobileNetV2 transfer"} <= names
    assert accuracy["layout"]["yaxis"]["title"]["text"] == "Accuracy (%)"
    assert loss["layout"]["yaxis"]["title"]["text"].startswith("Loss")
    comparison = at.table[0].value
    assert list(comparison["Model"]) == ["Baseline CNN", "Transfer (backbone)", "Baseline CNN",
                                         "MobileNetV2 transfer"]
    assert list(comparison["Epochs"]) == ["2", "2", "15", "3"]
    assert len(at.table) == 5  # the comparison, then a layer table and a per-class table per model
    baseline_layers, transfer_layers = at.table[1].value, at.table[2].value
    assert "Conv2D" in list(baseline_layers["Type"])
    assert list(transfer_layers["Type"]) == ["KerasLayer", "Dense"]
    assert list(transfer_layers["Trained"]) == ["no", "yes"]


def test_widget_changes_never_restart_training(open_page, tiny_state):
    at = open_page("experiments", state=dict(tiny_state, exp_b_epochs=3))
    at.button(key="run_baseline").click().run()
    job = at.session_state["exp_job"]
    at.number_input(key="exp_b_epochs").set_value(5).run()
    at.number_input(key="exp_image_size").set_value(96).run()
    assert at.session_state["exp_job"] is job
    snap = wait_for_job(at, rerun_while_waiting=True)
    assert snap.phase == "done"
    assert len(snap.run_dirs) == 1
    config = json.loads((snap.run_dirs[0] / "config.json").read_text())
    assert config["epochs"] == 3 and config["data"]["image_size"] == TEST_IMAGE_SIZE


def test_stop_keeps_finished_epochs_and_each_session_sees_only_its_own_job(open_page, tiny_state):
    at = open_page("experiments", state=dict(tiny_state, exp_b_epochs=300))
    at.button(key="run_baseline").click().run()
    job = at.session_state["exp_job"]
    deadline = time.monotonic() + JOB_WAIT_SECONDS
    while job.snapshot().epoch < 1:
        assert time.monotonic() < deadline and not job.snapshot().finished, job.snapshot()
        time.sleep(0.2)
    other = open_page("experiments", state=tiny_state)
    assert "exp_job" not in other.session_state
    assert not other.get("progress")
    at.run()
    next(b for b in at.button if b.label == "Stop").click().run()
    snap = wait_for_job(at, rerun_while_waiting=True)
    assert snap.phase == "stopped"
    assert len(snap.run_dirs) == 1
    metrics = json.loads((snap.run_dirs[0] / "metrics.json").read_text())
    assert metrics["stopped_early"] is True and 1 <= metrics["epochs_completed"] < 300
    assert "Stopped after" in at.warning[0].value


def test_quick_demo_and_article_presets_fill_the_settings(open_page, tiny_state):
    at = open_page("experiments", state=dict(tiny_state, exp_b_limit=10, exp_t_limit=10))
    next(b for b in at.button if b.label == "Quick demo").click().run()
    assert not at.exception
    notice = (at.success or at.warning)[0].value
    assert notice.startswith("Quick demo:")
    s = at.session_state
    assert s["exp_b_limit"] == s["exp_t_limit"]
    assert 1 <= s["exp_b_epochs"] <= 15 and 1 <= s["exp_t_epochs"] <= 3
    next(b for b in at.button if b.label == "Article settings").click().run()
    assert (s["exp_b_epochs"], s["exp_t_epochs"], s["exp_b_limit"], s["exp_image_size"]) == (15, 3, 0, 224)
    assert at.info[0].value.startswith("Article settings")


def test_run_history_shows_earlier_runs_and_lists_broken_folders(open_page, trained_runs, tmp_path):
    runs = tmp_path / "history"
    shutil.copytree(trained_runs["dir"], runs)
    (runs / ".incomplete-20250101-000000-baseline-dead").mkdir()
    damaged = runs / "20250101-000000-baseline-damaged"
    shutil.copytree(trained_runs["baseline"], damaged)
    (damaged / "metrics.json").unlink()
    at = open_page("experiments", runs_dir=runs)
    assert not at.exception
    assert sorted(at.multiselect[0].value) == sorted([trained_runs["baseline"].name, trained_runs["mobilenet_v2"].name])
    assert len(at.get("plotly_chart")) == 4  # the two curves and a confusion matrix per run
    assert len(at.table) == 5
    assert any("2 unfinished or damaged" in e.label for e in at.expander)
    at.multiselect[0].set_value([]).run()
    assert not at.get("plotly_chart")
    assert any("No runs selected" in i.value for i in at.info)


def test_offline_default_dataset_is_one_clear_error(open_page):
    at = open_page("experiments")
    assert not at.exception
    assert len(at.error) == 1
    assert "network is unreachable" in at.error[0].value
    assert not [m for m in at.markdown if m.value.startswith("**Estimated duration")]


def test_two_sessions_train_at_once_while_a_third_predicts(open_page, tiny_state, trained_runs, demo_folder,
                                                           tmp_path):
    """Each training session follows only its own job and ends with only its own runs on its charts, while
    a third session is served predictions by the shared cached model."""
    from core.runs.predict import load_for_prediction, predict_bytes

    runs = tmp_path / "shared"
    shutil.copytree(trained_runs["dir"], runs)
    # Long enough to still be training when the checks below run; both are stopped, never waited out.
    slow = dict(tiny_state, exp_b_epochs=300, exp_t_epochs=300, exp_t_cache=False)
    sessions = open_page("experiments", runs_dir=runs, state=slow), open_page("experiments", runs_dir=runs,
                                                                              state=slow)
    sessions[0].button(key="run_baseline").click().run()
    sessions[1].button(key="run_mobilenet_v2").click().run()
    jobs = [at.session_state["exp_job"] for at in sessions]
    assert jobs[0] is not jobs[1]
    deadline = time.monotonic() + JOB_WAIT_SECONDS
    while any(job.snapshot().epoch < 1 for job in jobs):  # both past their first epoch: training together
        assert time.monotonic() < deadline and not any(job.snapshot().finished for job in jobs), \
            [job.snapshot() for job in jobs]
        time.sleep(0.2)

    predicting = open_page("predict", runs_dir=runs)
    image = min((demo_folder / "circles").iterdir())
    predicting.file_uploader[0].set_value([(image.name, image.read_bytes(), "image/jpeg")]).run()
    assert not predicting.exception and not predicting.error
    expected = predict_bytes(load_for_prediction(trained_runs["mobilenet_v2"]), [(image.name, image.read_bytes())])
    assert [m.value for m in predicting.markdown if m.value.startswith("### ")] == [f"### {expected[0].label}"]
    assert not any(job.snapshot().finished for job in jobs)  # served while both were still training

    for at, own, other in zip(sessions, ("Baseline CNN", "Transfer model"), ("Transfer model", "Baseline CNN")):
        at.run()
        assert not at.exception
        headings = [h.value for h in at.subheader]
        assert f"Training {own}" in headings and f"Training {other}" not in headings
    for at in sessions:
        next(b for b in at.button if b.label == "Stop").click().run()
    snaps = [wait_for_job(at, rerun_while_waiting=True) for at in sessions]
    assert [snap.phase for snap in snaps] == ["stopped", "stopped"]
    own_runs = [[path.name for path in snap.run_dirs] for snap in snaps]
    assert [len(ids) for ids in own_runs] == [1, 1] and own_runs[0] != own_runs[1]
    assert own_runs[0][0].split("-")[2] == "baseline" and own_runs[1][0].split("-")[2] == "mobilenet_v2"
    for at, ids in zip(sessions, own_runs):
        assert at.multiselect(key="exp_shown").value == ids  # its own result, not the other session's


def test_quick_demo_never_picks_more_images_than_the_hosted_preset_allows(open_page, tiny_state, monkeypatch):
    import dataclasses
    import os

    import core.settings.presets

    small = dataclasses.replace(core.settings.presets.PRESETS["cloud"], max_train_images=12)
    monkeypatch.setitem(core.settings.presets.PRESETS, "cloud", small)
    monkeypatch.setenv("LAB_PRESET", "cloud")
    # A hosted preset only reads data and hub folders inside the Lab's own cache (uploads, generated demo).
    cache = Path(os.environ["LAB_CACHE_DIR"])
    handle, data = cache / "quick-demo-backbone", cache / "uploads" / "quick-demo-data"
    if not handle.exists():
        shutil.copytree(tiny_state["lab_handle"], handle)
    if not data.exists():
        shutil.copytree(tiny_state["lab_source"].removeprefix("folder:"), data)
    at = open_page("experiments", state=dict(tiny_state, lab_handle=str(handle), lab_source=f"folder:{data}"))
    next(b for b in at.button if b.label == "Quick demo").click().run()
    assert not at.exception
    s = at.session_state
    notice = [m.value for m in (*at.success, *at.warning, *at.error)]
    assert 1 <= s["exp_b_limit"] <= 12 and s["exp_b_limit"] == s["exp_t_limit"], notice
