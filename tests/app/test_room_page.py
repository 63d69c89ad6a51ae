"""The Room page and Home's join link: names and figures of everyone's runs, clearing, and a link without a key."""
from __future__ import annotations

from pathlib import Path

import pytest
from room_helpers import fake_run

from core.runs import room

ROOT = Path(__file__).resolve().parents[2]


def page_text(at) -> str:
    return "\n".join(str(e.value) for e in (*at.markdown, *at.caption, *at.info, *at.error, *at.success,
                                            *at.code, *at.text_input))


@pytest.fixture
def trained_room(tmp_path) -> Path:
    """A runs folder where someone else already trained both models on the shapes."""
    runs = tmp_path / "runs"
    fake_run(runs, "other-base", "baseline", 0.75)
    fake_run(runs, "other-transfer", "mobilenet_v2", 0.975)
    room.record_runs(runs, "someone-else", [runs / "other-base", runs / "other-transfer"])
    room.set_name(runs, "someone-else", "Ben")
    return runs


def test_the_room_lists_each_participants_runs_with_names_and_accuracies(open_page, trained_room):
    at = open_page("room", runs_dir=trained_room)
    assert not at.exception and not at.error
    token = at.session_state["lab_token"]
    at.text_input(key="room_name").set_value("<script>alert(1)</script>\x1b**bold**" + "x" * 10_000).run()
    shown = "<script>alert(1)</script>**bo"  # the field takes 30 characters, the control character goes
    assert at.text_input(key="room_name").value == shown
    assert room.name_of(trained_room, token) == shown
    mine = fake_run(trained_room, "my-base", "baseline", 0.8125, seconds=95)
    room.record_job(trained_room, {"origin": "dashboard", "owner": token}, [mine])  # as the worker does
    at.run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    rows = {r["Participant"]: r for r in table.to_dict("records")}
    assert set(rows) == {f"{shown} (you)", "Ben"}  # the name is a table cell: text, never markup
    assert rows[f"{shown} (you)"]["Baseline CNN"] == "81.2%" and rows[f"{shown} (you)"]["Transfer"] == "-"
    assert rows[f"{shown} (you)"]["Time"] == "1 min 35 s / -"
    ben = rows["Ben"]
    assert (ben["Baseline CNN"], ben["Transfer"], ben["Transfer model"]) == ("75.0%", "97.5%", "Transfer (backbone)")
    assert (ben["Dataset"], ben["Classes"], ben["Images/class"]) == ("shapes", "2: circles, squares", "60")
    everything = page_text(at) + table.to_string() + " ".join(at.selectbox(key="room_pick").options)
    assert token not in everything and room.owner_key(token) not in everything


def test_a_room_model_opens_on_predict(open_page, trained_room):
    at = open_page("room", runs_dir=trained_room)
    picker = at.selectbox(key="room_pick")
    assert picker.options == ["Ben · 97.5% · Transfer (backbone) · shapes", "Ben · 75.0% · Baseline CNN · shapes"]
    picker.set_value("other-base").run()
    at.button(key="room_try").click().run()
    assert not at.exception
    assert at.title[0].value == "Predict"
    assert at.selectbox(key="pred_run").value == "other-base"


def test_on_the_local_preset_anyone_clears_the_room_and_no_run_folder_goes(open_page, trained_room):
    at = open_page("room", runs_dir=trained_room)
    assert len(at.dataframe) == 1
    at.button(key="room_clear").click().run()
    assert not at.exception
    assert "The room is cleared." in page_text(at)
    assert not at.dataframe and "No models in the room yet" in page_text(at)
    assert (trained_room / "other-base" / "model.h5").is_file()


def test_on_the_cloud_preset_clearing_needs_the_hosts_password(open_page, trained_room, monkeypatch):
    monkeypatch.setenv("LAB_PRESET", "cloud")
    monkeypatch.delenv("LAB_ROOM_PASSWORD", raising=False)
    at = open_page("room", runs_dir=trained_room)
    assert not at.exception
    assert "none is set" in page_text(at)
    assert not [b for b in at.button if b.key == "room_clear"]

    monkeypatch.setenv("LAB_ROOM_PASSWORD", "s3cret-room")
    at.run()
    at.text_input(key="room_clear_password").set_value("guess").run()
    at.button(key="room_clear").click().run()
    assert "That is not the host's password." in page_text(at)
    assert len(at.dataframe) == 1
    at.text_input(key="room_clear_password").set_value("s3cret-room").run()
    at.button(key="room_clear").click().run()
    assert "The room is cleared." in page_text(at) and not at.dataframe


def test_the_app_secret_is_the_password_on_a_hosted_lab(open_page, trained_room, monkeypatch):
    monkeypatch.setenv("LAB_PRESET", "cloud")
    monkeypatch.delenv("LAB_ROOM_PASSWORD", raising=False)
    at = open_page("room", runs_dir=trained_room)
    at.secrets["room_password"] = "from-secrets"
    at.run()
    assert "none is set" not in page_text(at)
    at.text_input(key="room_clear_password").set_value("from-secrets").run()
    at.button(key="room_clear").click().run()
    assert "The room is cleared." in page_text(at)


def test_homes_join_link_is_the_apps_address_without_the_session_key(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.context = {"url": "http://10.1.2.3:8501/home?s=private-key#top"}
    at.run()
    assert not at.exception
    token = at.session_state["lab_token"]
    [expander] = [e for e in at.expander if e.label == "Join this room"]
    [link] = [c.value for c in expander.code]
    assert link == "http://10.1.2.3:8501/"
    assert "?s=" not in link and token not in link and "private-key" not in link
    assert [i.captions for i in expander.get("image")] == [["Scan to join"]], "the QR code is drawn as an image"
    assert not expander.warning  # a network address: others can open it
