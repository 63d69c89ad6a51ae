"""The Experiments page: estimates, presets, a tiny run in a worker process to the end, stop, queue, run history."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from lab_helpers import JOB_WAIT_SECONDS, TEST_IMAGE_SIZE, followed_job, run_picker, wait_for_epoch, wait_for_job

from core.settings.source import Source


@pytest.fixture
def tiny_state(demo_folder, demo_backbone) -> dict:
    """Session state for a tiny experiment: generated folder, local SavedModel handle, 64x64, 2 epochs."""
    return {
        "lab_source": f"folder:{demo_folder}", "lab_handle": str(demo_backbone), "exp_image_size": TEST_IMAGE_SIZE,
        "exp_b_epochs": 2, "exp_t_epochs": 2, "exp_b_batch": 16, "exp_t_batch": 16, "exp_t_lr": 0.01,
    }


def inside_the_cache(state: dict, name: str = "hosted") -> dict:
    """The state with its data and hub folders copied inside the Lab's cache: the only server folders a
    hosted preset reads (uploads, the generated demo). The hosted tests share one name: the same folders
    are the same setting, whose estimates a server times once for all its visitors (this process is the
    server of every page a test opens), where each name would time both models again."""
    import os

    cache = Path(os.environ["LAB_CACHE_DIR"])
    handle, data = cache / f"{name}-backbone", cache / "uploads" / f"{name}-data"
    if not handle.exists():
        shutil.copytree(state["lab_handle"], handle)
    if not data.exists():
        shutil.copytree(Source.parse(state["lab_source"]).value, data)
    return dict(state, lab_handle=str(handle), exp_t_handle=str(handle), lab_source=str(Source.folder(data)))


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
    timed = [c.value for c in at.caption if "training and" in c.value]
    assert len(timed) == 2 and all("From a few batches timed on this server" in c for c in timed), timed
    at.button(key="run_both").click().run()
    assert not at.exception
    if not followed_job(at).finished:
        assert at.get("progress"), "a running job shows a progress bar"
        assert any(b.label in ("Stop", "Cancel") for b in at.button)
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
    assert len(at.table) == 3  # the comparison, then a per-class table per model
    # Layer tables scroll sideways in their half of the page rather than cut their last column off.
    baseline_layers, transfer_layers = at.dataframe[0].value, at.dataframe[1].value
    assert list(baseline_layers.columns) == ["Layer", "Type", "Output shape", "Parameters", "Trained"]
    assert "Conv2D" in list(baseline_layers["Type"])
    assert list(transfer_layers["Type"]) == ["KerasLayer", "Dense"]
    assert list(transfer_layers["Trained"]) == ["no", "yes"]
    # The estimates of the same settings now come from what these two runs really took.
    at.run()
    learned = [c.value for c in at.caption if "training and" in c.value]
    assert len(learned) == 2, learned
    assert all("From what 1 finished run of the same setting took on this server" in c for c in learned), learned


def test_widget_changes_never_restart_training(open_page, tiny_state):
    at = open_page("experiments", state=dict(tiny_state, exp_b_epochs=3))
    at.button(key="run_baseline").click().run()
    job_id = followed_job(at).job_id
    at.number_input(key="exp_b_epochs").set_value(5).run()
    at.number_input(key="exp_image_size").set_value(96).run()
    assert at.session_state["exp_following"] == [job_id]
    snap = wait_for_job(at, rerun_while_waiting=True)
    assert snap.phase == "done"
    assert len(snap.run_dirs) == 1
    config = json.loads((snap.run_dirs[0] / "config.json").read_text())
    assert config["epochs"] == 3 and config["data"]["image_size"] == TEST_IMAGE_SIZE


def test_stop_keeps_finished_epochs_and_other_sessions_see_the_training_without_owning_it(open_page, tiny_state):
    at = open_page("experiments", state=dict(tiny_state, exp_b_epochs=300))
    at.button(key="run_baseline").click().run()
    view = wait_for_epoch(at)
    other = open_page("experiments", state=tiny_state)
    assert not other.session_state["exp_following"] if "exp_following" in other.session_state else True
    cards = [m.value for m in other.markdown if m.value.startswith("**Baseline CNN**")]
    assert cards == ["**Baseline CNN** · another visitor's"]  # on "Running now", never as its own
    assert not other.button(key="run_baseline").disabled  # and it may start its own
    at.run()
    assert "**Baseline CNN** · yours" in [m.value for m in at.markdown]
    at.button(key=f"stop_{view.job_id}").click().run()
    assert "Stopping after the current batch ..." in [p.proto.text for p in at.get("progress")]
    snap = wait_for_job(at, rerun_while_waiting=True)
    assert snap.phase == "stopped"
    assert len(snap.run_dirs) == 1
    metrics = json.loads((snap.run_dirs[0] / "metrics.json").read_text())
    assert metrics["stopped_early"] is True and 1 <= metrics["epochs_completed"] < 300
    assert "Stopped after" in at.warning[0].value


def test_a_reload_finds_the_settings_and_the_training_again(open_page, tiny_state, monkeypatch):
    at = open_page("experiments", state=dict(tiny_state, exp_b_epochs=300, exp_seed=7))
    token = at.session_state["lab_token"]
    assert at.query_params["s"] == token
    at.button(key="run_baseline").click().run()
    view = wait_for_epoch(at)
    reloaded = open_page("experiments", query={"s": token})
    s = reloaded.session_state
    assert (s["lab_source"], s["lab_handle"], s["exp_b_epochs"], s["exp_seed"]) == (
        tiny_state["lab_source"], tiny_state["lab_handle"], 300, 7)
    assert s["exp_following"] == [view.job_id]
    assert "**Baseline CNN** · yours" in [m.value for m in reloaded.markdown]
    assert reloaded.button(key="run_baseline").disabled
    # A shared link shows the training to a stranger, who cannot stop it on a hosted Lab.
    monkeypatch.setenv("LAB_PRESET", "cloud")
    stranger = open_page("experiments", query={"job": view.job_id})
    assert stranger.session_state["exp_following"] == [view.job_id]
    assert "**Baseline CNN** · another visitor's" in [m.value for m in stranger.markdown]
    assert not [b for b in stranger.button if b.key == f"stop_{view.job_id}"]
    reloaded.button(key=f"stop_{view.job_id}").click().run()
    assert wait_for_job(reloaded).phase == "stopped"


def test_an_identical_experiment_trains_once(open_page, tiny_state, tmp_path):
    state = dict(tiny_state, exp_b_epochs=1, exp_b_limit=32)
    first, second = open_page("experiments", state=state), open_page("experiments", state=state)
    first.button(key="run_baseline").click().run()
    second.button(key="run_baseline").click().run()
    assert followed_job(second).job_id == followed_job(first).job_id
    assert "following it, so it trains once" in second.info[0].value
    snap = wait_for_job(first)
    assert snap.phase == "done"
    third = open_page("experiments", state=state)
    third.button(key="run_baseline").click().run()
    assert "exp_following" not in third.session_state or not third.session_state["exp_following"]
    assert third.info[0].value.startswith("Baseline CNN was trained here already with the same data")
    assert run_picker(third).value == [snap.run_dirs[0].name]
    assert len([p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]) == 1


def test_quick_demo_and_article_presets_fill_the_settings(open_page, tiny_state):
    at = open_page("experiments", state=dict(tiny_state, exp_b_limit=10, exp_t_limit=10))
    next(b for b in at.button if b.label == "Quick demo").click().run()
    assert not at.exception
    notice = (at.success or at.warning)[0].value
    assert notice.startswith("Quick demo:")
    at.run()  # the page reruns by itself (an estimate arrives, a training ends): the notice stays
    assert [e.value for e in at.success or at.warning] == [notice]
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
    assert len(at.table) == 3 and len(at.dataframe) == 2
    assert any("2 unfinished or damaged" in e.label for e in at.expander)
    at.multiselect[0].set_value([]).run()
    assert not at.get("plotly_chart")
    assert any("No runs selected" in i.value for i in at.info)


def test_offline_default_dataset_asks_for_a_choice_and_a_chosen_one_is_an_error(open_page):
    # A new visitor has chosen nothing yet: the article's dataset is only the default, so no red error.
    at = open_page("experiments")
    assert not at.exception and not at.error
    offline = [i.value for i in at.info if "network is unreachable" in i.value]
    assert len(offline) == 1 and "Generated demo" in offline[0]
    assert not [m for m in at.markdown if m.value.startswith("**Estimated duration")]
    assert at.button(key="run_both").disabled
    # Loaded on the Dataset page on purpose, it is the error it is.
    chosen = open_page("experiments", state={"ds_loaded": "tfds:cats_vs_dogs"})
    assert len(chosen.error) == 1 and "network is unreachable" in chosen.error[0].value


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
    jobs = [followed_job(at).job_id for at in sessions]
    assert jobs[0] != jobs[1]
    for at in sessions:  # both past their first epoch: training together, each in its own worker
        wait_for_epoch(at)

    predicting = open_page("predict", runs_dir=runs)
    image = min((demo_folder / "circles").iterdir())
    predicting.file_uploader[0].set_value([(image.name, image.read_bytes(), "image/jpeg")]).run()
    assert not predicting.exception and not predicting.error
    expected = predict_bytes(load_for_prediction(trained_runs["mobilenet_v2"]), [(image.name, image.read_bytes())])
    assert [m.value for m in predicting.markdown if m.value.startswith("### ")] == [f"### {expected[0].label}"]
    assert not any(followed_job(at).finished for at in sessions)  # served while both were still training

    for at, own, other in zip(sessions, ("Baseline CNN", "Transfer (backbone)"), ("Transfer (backbone)", "Baseline CNN")):
        at.run()
        assert not at.exception
        cards = [m.value for m in at.markdown]
        assert f"**{own}** · yours" in cards and f"**{other}** · another visitor's" in cards
    for at, job_id in zip(sessions, jobs):
        at.button(key=f"stop_{job_id}").click().run()
    snaps = [wait_for_job(at, rerun_while_waiting=True) for at in sessions]
    assert [snap.phase for snap in snaps] == ["stopped", "stopped"]
    own_runs = [[path.name for path in snap.run_dirs] for snap in snaps]
    assert [len(ids) for ids in own_runs] == [1, 1] and own_runs[0] != own_runs[1]
    assert own_runs[0][0].split("-")[2] == "baseline" and own_runs[1][0].split("-")[2] == "mobilenet_v2"
    for at, ids in zip(sessions, own_runs):
        assert run_picker(at).value == ids  # its own result, not the other session's


def test_quick_demo_never_picks_more_images_than_the_hosted_preset_allows(open_page, tiny_state, monkeypatch):
    import dataclasses

    import core.settings.presets

    small = dataclasses.replace(core.settings.presets.PRESETS["cloud"], max_train_images=12)
    monkeypatch.setitem(core.settings.presets.PRESETS, "cloud", small)
    monkeypatch.setenv("LAB_PRESET", "cloud")
    at = open_page("experiments", state=inside_the_cache(tiny_state))
    next(b for b in at.button if b.label == "Quick demo").click().run()
    assert not at.exception
    s = at.session_state
    notice = [m.value for m in (*at.success, *at.warning, *at.error)]
    assert 1 <= s["exp_b_limit"] <= 12 and s["exp_b_limit"] == s["exp_t_limit"], notice


def test_offline_the_transfer_model_cannot_be_started_and_the_page_says_what_to_do(open_page, demo_folder):
    at = open_page("experiments", state={"lab_source": f"folder:{demo_folder}", "exp_image_size": 64,
                                         "exp_b_epochs": 1})
    assert not at.exception
    assert at.text_input(key="exp_t_handle").value.startswith("https://tfhub.dev/")  # offline, not cached
    assert any("cannot train here" in w.value and "Generated demo" in w.value for w in at.warning)
    assert at.button(key="run_mobilenet_v2").disabled and at.button(key="run_both").disabled
    assert not at.button(key="run_baseline").disabled  # the baseline needs no download


def test_a_run_that_ends_while_no_page_watches_reaches_the_charts_after_a_reload(open_page, tiny_state):
    at = open_page("experiments", state=dict(tiny_state, exp_b_epochs=1, exp_seed=11))
    token = at.session_state["lab_token"]
    at.button(key="run_baseline").click().run()
    job = followed_job(at)
    # The page is closed while it trains: nobody sees the job running or ending.
    deadline = time.monotonic() + JOB_WAIT_SECONDS
    while not (view := followed_job(at)).finished:
        assert time.monotonic() < deadline, view.snapshot
        time.sleep(0.3)
    run_id = view.snapshot.run_dirs[0].name
    reloaded = open_page("experiments", query={"s": token})
    assert not reloaded.exception
    assert run_picker(reloaded).value == [run_id]
    assert [s.value for s in reloaded.success] == [view.snapshot.message]
    # Delivered once: choosing other runs afterwards is not undone by the next poll or reload.
    run_picker(reloaded).set_value([]).run()
    again = open_page("experiments", query={"s": token})
    assert run_picker(again).value == []
    assert job.job_id in again.session_state["exp_following"]


def test_run_both_trains_the_transfer_model_first_and_charts_it_while_the_baseline_trains(open_page, tiny_state):
    at = open_page("experiments", state=dict(tiny_state, exp_b_epochs=300, exp_t_epochs=1, exp_seed=12))
    at.button(key="run_both").click().run()
    deadline = time.monotonic() + JOB_WAIT_SECONDS
    while not (view := followed_job(at)).snapshot.run_dirs:
        assert time.monotonic() < deadline and not view.finished, view.snapshot
        time.sleep(0.3)
    assert view.title == "Transfer (backbone), then Baseline CNN"
    transfer = view.snapshot.run_dirs[0].name
    assert transfer.split("-")[2] == "mobilenet_v2"
    at.run()
    assert not at.exception
    assert not followed_job(at).finished  # the baseline's 300 epochs are still ahead
    assert run_picker(at).value == [transfer]
    assert any("Transfer (backbone) finished: on the charts below" in c.value for c in at.caption)
    at.button(key=f"stop_{view.job_id}").click().run()
    snap = wait_for_job(at, rerun_while_waiting=True)
    assert snap.phase == "stopped" and snap.run_dirs[0].name == transfer


def test_a_hosted_lab_refuses_a_training_longer_than_its_cap_by_the_estimate(open_page, tiny_state, monkeypatch):
    import dataclasses
    import os

    import core.settings.presets

    short = dataclasses.replace(core.settings.presets.PRESETS["cloud"], max_job_minutes=0.01)
    monkeypatch.setitem(core.settings.presets.PRESETS, "cloud", short)
    monkeypatch.setenv("LAB_PRESET", "cloud")
    at = open_page("experiments", state=dict(inside_the_cache(tiny_state), exp_seed=21))
    at.button(key="run_both").click().run()
    assert not at.exception
    assert any("the hosted Lab runs trainings of at most 0.01 min" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert not at.session_state["exp_following"] if "exp_following" in at.session_state else True
    jobs = Path(os.environ["LAB_RUNS_DIR"]) / ".jobs"
    assert not jobs.exists() or not [p for p in jobs.iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_a_hosted_page_writes_the_cache_backbone_without_the_servers_path(open_page, tiny_state, monkeypatch):
    import os

    monkeypatch.setenv("LAB_PRESET", "cloud")
    state = inside_the_cache(tiny_state)
    del state["exp_t_handle"]  # filled from the session's handle, as after the Generated demo's Load
    at = open_page("experiments", state=state)
    field = at.text_input(key="exp_t_handle").value
    assert field == "cache:hosted-backbone"
    assert os.environ["LAB_CACHE_DIR"] not in " ".join(m.value for m in [*at.markdown, *at.caption, *at.error])
    assert not at.error and len([m for m in at.markdown if m.value.startswith("**Estimated duration")]) == 2
    # The alias names only folders inside the cache: climbing out of it is refused like any server folder.
    at.text_input(key="exp_t_handle").set_value("cache:../../etc").run()
    assert any(e.value.startswith("No estimate: This server only uses") for e in at.error), [e.value for e in at.error]
