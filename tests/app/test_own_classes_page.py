"""The Your classes page: naming classes, adding images once each, removing, training and trying the model."""
from __future__ import annotations

import pytest
from lab_helpers import wait_for_job
from sample_images import encode, solid

from core.data.own_classes import store_for
from core.settings.source import Source


def png(seed: int, colour=None) -> bytes:
    colour = colour or ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256)
    return encode(solid(colour, (48 + seed, 40)), "PNG")


def add_class(at, name: str):
    at.text_input(key="own_new_name").set_value(name)
    next(b for b in at.button if b.label == "Add class").click().run()
    return at


def upload(at, files: list[tuple[str, bytes]]):
    next(u for u in at.file_uploader if u.key.startswith("own_up_")).set_value(
        [(name, data, "image/png") for name, data in files]).run()
    return at


def choose(at, name: str):
    at.segmented_control(key="own_class").set_value(name).run()
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def test_two_classes_filled_by_upload_each_file_once(open_page):
    at = open_page("own_classes")
    assert not at.exception
    assert "naming your first class" in at.info[0].value
    add_class(at, "Red mug")
    add_class(at, "pen")
    assert at.segmented_control(key="own_class").options == ["Red mug", "pen"]
    choose(at, "Red mug")
    upload(at, [("a.png", png(1)), ("b.png", png(2)), ("notes.png", b"not a picture at all")])
    assert not at.exception
    assert any("Added 2 images to Red mug" in t for t in texts(at.success))
    assert any("notes.png" in t and "not a readable image" in t for t in texts(at.error))
    assert any("2 of 30 images" in m for m in texts(at.markdown))
    at.run()  # a rerun adds nothing again
    store = store_for(at.session_state["lab_token"])
    assert [c.count for c in store.classes()] == [2, 0]
    next(b for b in at.button if b.key and b.key.startswith("own_rm_")).click().run()
    assert [c.count for c in store.classes()] == [1, 0]
    assert "at least 10 images: 2 of them are held out" in " ".join(texts(at.caption))


@pytest.mark.parametrize("name", ["../x", "<script>", "a/b"])
def test_hostile_names_are_refused_in_one_line(open_page, name):
    at = add_class(open_page("own_classes"), name)
    assert not at.exception
    assert len(at.error) == 1
    assert store_for(at.session_state["lab_token"]).class_names() == []


def test_rename_and_remove_a_class(open_page):
    at = add_class(add_class(open_page("own_classes"), "a"), "b")
    choose(at, "a")
    at.text_input(key="own_rename").set_value("apples")
    next(b for b in at.button if b.label == "Rename").click().run()
    assert at.segmented_control(key="own_class").options == ["apples", "b"]
    next(b for b in at.button if b.label.startswith("Remove 0 images")).click().run()
    assert at.segmented_control(key="own_class").options == ["b"]


def test_classes_come_back_after_a_reload(open_page):
    at = add_class(open_page("own_classes"), "keys")
    upload(at, [("k.png", png(4))])
    token = at.session_state["lab_token"]
    again = open_page("own_classes", query={"s": token})
    assert again.session_state["lab_token"] == token
    assert again.segmented_control(key="own_class").options == ["keys"]
    assert any("1 of 30 images" in m for m in texts(again.markdown))


def test_train_shows_validation_accuracy_and_try_it_opens_predict(open_page, demo_backbone, monkeypatch):
    import threading
    from collections import OrderedDict

    from app_pages.parts import common
    from core.runs import predict

    monkeypatch.setattr(predict, "_backbones", OrderedDict())  # what this server process has loaded for Predict
    monkeypatch.setattr(common, "_warmed", set())
    at = open_page("own_classes", state={"lab_handle": str(demo_backbone)})
    for name, colour in (("reds", (220, 30, 30)), ("blues", (30, 30, 220))):
        add_class(at, name)
        choose(at, name)
        upload(at, [(f"{name}{i}.png", png(i, tuple(min(255, c + 3 * i) for c in colour))) for i in range(6)])
    assert not [e for e in at.error]
    next(b for b in at.button if b.label == "Train").click().run()
    assert not at.exception and not at.error
    assert Source.parse(at.session_state["lab_source"]).is_folder
    assert at.session_state["ds_loaded"] == at.session_state["lab_source"]
    snapshot = wait_for_job(at)
    assert snapshot.phase == "done", snapshot.message
    result = " ".join(texts(at.markdown))
    assert "validation accuracy" in result and "on 2 held-out images" in result
    # While it trained, the server loaded the module Predict classifies with, once, under the handle the
    # model's file names: Try it finds it loaded.
    for thread in [t for t in threading.enumerate() if t.name == "lab-warm-predict"]:
        thread.join(120)
    assert len(predict._backbones) == 1
    warmed = next(iter(predict._backbones.values()))
    next(b for b in at.button if b.label == "Try it").click().run()
    assert not at.exception
    assert list(predict._backbones.values()) == [warmed]
    assert at.session_state["pred_run"] == snapshot.run_dirs[0].name
    assert at.session_state["pred_camera"] is True
    assert at.title[0].value == "Predict"


def evaluation_of(run_dir: str, token: str) -> None:
    """A run's evaluation as the run's section shows it to the session holding token."""
    import streamlit as st

    from app_pages.parts.run_details import show_evaluation
    from core.runs.folders import open_run

    st.session_state["lab_token"] = token
    show_evaluation(open_run(run_dir))


@pytest.mark.parametrize("own", [True, False])
def test_mistakes_of_a_run_on_someone_elses_photos_are_not_shown(trained_runs, tmp_path, own):
    import json
    import shutil

    from streamlit.testing.v1 import AppTest

    from core.data.own_classes import own_root, session_folder_name

    owner, visitor = "a" * 32, "b" * 32
    run = tmp_path / "run"
    shutil.copytree(trained_runs["baseline"], run)
    evaluation = json.loads((run / "evaluation.json").read_text())
    matrix = evaluation["matrix"]  # one mistake with its thumbnail, as an evaluation stores it
    matrix[0][0], matrix[0][1] = matrix[0][0] - 1, matrix[0][1] + 1
    (run / "evaluation" / "wrong_test.png").write_bytes(png(1))
    evaluation["wrong"] = [{"thumbnail": "evaluation/wrong_test.png", "true_label": "circles",
                            "predicted_label": "squares", "confidence": 0.9, "true_probability": 0.1,
                            "source": "circles/1.jpg"}]
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    config = json.loads((run / "config.json").read_text())
    config["data"]["source"] = f"folder:{own_root() / session_folder_name(owner) / 'sets' / 'x'}"
    (run / "config.json").write_text(json.dumps(config))
    at = AppTest.from_function(evaluation_of, args=(str(run), owner if own else visitor), default_timeout=60).run()
    assert not at.exception
    captions = [c.value for c in at.caption]
    gallery = [c for c in captions if c.startswith("true **")]
    if own:
        assert gallery and len(at.get("image")) == len(gallery)
    else:
        assert not gallery and not at.get("image")
        assert any("another participant's own photos" in c for c in captions)


def test_a_hosted_lab_refuses_a_hub_handle_that_names_a_server_folder(open_page, monkeypatch):
    monkeypatch.setenv("LAB_PRESET", "cloud")
    at = open_page("own_classes", state={"lab_handle": "/etc"})
    for name in ("reds", "blues"):
        add_class(at, name)
        choose(at, name)
        upload(at, [(f"{name}{i}.png", png(i + (0 if name == "reds" else 40))) for i in range(5)])
    next(b for b in at.button if b.label == "Train").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "/etc" not in at.error[0].value
    assert "exp_own_job" not in at.session_state or at.session_state["exp_own_job"] is None
