"""The room's ledger: entries by a hash of the session, names as plain bounded text, clearing, many writers."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from room_helpers import fake_run

from core.runs import room


def test_a_recorded_run_is_a_row_with_its_figures_under_a_hash_of_the_token(tmp_path):
    run = fake_run(tmp_path, "r-base", accuracy=0.8125, seconds=95.0)
    assert room.record_runs(tmp_path, "secret-token", [run]) == 1
    assert room.record_runs(tmp_path, "secret-token", [run]) == 0  # the worker and a page may both record it
    stored = (tmp_path / ".room" / "entries.json").read_text()
    assert "secret-token" not in stored
    assert json.loads(stored)["entries"][0]["owner"] == room.owner_key("secret-token")
    [row] = room.rows(tmp_path)
    assert row.name == room.default_name(room.owner_key("secret-token"))
    assert (row.dataset, row.classes, row.images_per_class) == ("shapes", ("circles", "squares"), (60, 60))
    assert row.baseline.val_accuracy == 0.8125 and row.baseline.seconds == 95.0 and row.transfer is None


def test_baseline_and_transfer_on_the_same_data_share_a_row_and_other_data_gets_its_own(tmp_path):
    token = "tok-a"
    old = fake_run(tmp_path, "r1", "baseline", 0.60, finished_at=time.time() - 60)
    new = fake_run(tmp_path, "r2", "baseline", 0.70)
    transfer = fake_run(tmp_path, "r3", "mobilenet_v2", 0.95)
    other = fake_run(tmp_path, "r4", "mobilenet_v2", 0.99, classes=("cats", "dogs"), source="tfds:cats_vs_dogs")
    room.record_runs(tmp_path, token, [old, new, transfer])
    room.record_runs(tmp_path, token, [other])
    room.record_runs(tmp_path, "tok-b", [transfer])  # someone else's entry of the same run: a row of theirs
    rows = room.rows(tmp_path)
    assert len(rows) == 3
    mine = [r for r in rows if r.owner == room.owner_key(token)]
    shapes = next(r for r in mine if r.dataset == "shapes")
    assert shapes.baseline.run_id == "r2" and shapes.transfer.run_id == "r3"  # the newest of each kind
    assert shapes.transfer.model == "Transfer (backbone)"
    assert next(r for r in mine if r.dataset == "cats_vs_dogs").baseline is None


def test_runs_outside_the_runs_folder_gone_or_damaged_are_left_out(tmp_path):
    elsewhere = fake_run(tmp_path / "elsewhere", "r-out")
    assert room.record_runs(tmp_path, "tok", [elsewhere, tmp_path / ".hidden", tmp_path / "r-missing"]) == 1
    damaged = fake_run(tmp_path, "r-bad")
    (damaged / "metrics.json").write_text('{"final_val_accuracy": "high"}')
    room.record_runs(tmp_path, "tok", [damaged])
    assert room.rows(tmp_path) == []


@pytest.mark.parametrize("typed, shown", [
    ("<script>alert(1)</script>", "<script>alert(1)</script>"),  # text: escaped where it is shown
    ("**bold**", "**bold**"),
    ("x" * 10_000, "x" * room.MAX_NAME_CHARS),
    ("An\x00a\x1b[31m\u202eli\u200bce\r\n\tB", "Ana[31mlice B"),
    ("   \x07  ", ""),
])
def test_names_are_plain_bounded_text_kept_by_the_hash(tmp_path, typed, shown):
    assert room.set_name(tmp_path, "tok", typed) == shown
    assert room.name_of(tmp_path, "tok") == shown
    assert room.name_of(tmp_path, "another") == ""
    assert "tok" not in json.dumps(json.loads((tmp_path / ".room" / "names.json").read_text()))


def test_a_session_renames_only_itself_and_a_hand_edited_name_is_cleaned_again(tmp_path):
    room.set_name(tmp_path, "tok-a", "Ana")
    room.set_name(tmp_path, "tok-b", "Ben")
    room.set_name(tmp_path, "tok-a", "Ana B.")
    assert room.names(tmp_path) == {room.owner_key("tok-a"): "Ana B.", room.owner_key("tok-b"): "Ben"}
    path = tmp_path / ".room" / "names.json"
    path.write_text(json.dumps({room.owner_key("tok-b"): {"name": "Ben\x1b" + "n" * 100, "at": 1}, "x": 5}))
    assert room.names(tmp_path) == {room.owner_key("tok-b"): "Ben" + "n" * (room.MAX_NAME_CHARS - 3)}


def test_the_ledger_and_names_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(room, "MAX_ENTRIES", 20)
    monkeypatch.setattr(room, "MAX_PER_OWNER", 5)
    monkeypatch.setattr(room, "MAX_NAMES", 3)
    for i in range(8):
        room.record_runs(tmp_path, "busy", [tmp_path / f"busy-{i}"], at=1000 + i)
    for i in range(30):
        room.record_runs(tmp_path, f"tok-{i}", [tmp_path / f"run-{i}"], at=2000 + i)
        room.set_name(tmp_path, f"tok-{i}", f"name {i}")
    entries = room.entries(tmp_path)
    assert len(entries) == 20 and entries[-1].run_id == "run-29" and entries[0].run_id == "run-10"
    assert len(room.names(tmp_path)) == 3 and room.name_of(tmp_path, "tok-29") == "name 29"
    for i in range(8):
        room.record_runs(tmp_path, "busy", [tmp_path / f"again-{i}"], at=3000 + i)
    assert sum(e.owner == room.owner_key("busy") for e in room.entries(tmp_path)) == 5


def test_clearing_hides_earlier_entries_and_keeps_run_folders(tmp_path):
    early = fake_run(tmp_path, "r-early")
    room.record_runs(tmp_path, "tok", [early], at=time.time() - 10)
    room.clear(tmp_path)
    assert room.rows(tmp_path) == [] and early.is_dir()
    late = fake_run(tmp_path, "r-late")
    room.record_runs(tmp_path, "tok", [late])
    assert [r.baseline.run_id for r in room.rows(tmp_path)] == ["r-late"]
    room.record_runs(tmp_path, "tok", [early])  # already in the ledger: stays hidden
    assert [r.baseline.run_id for r in room.rows(tmp_path)] == ["r-late"]


def test_a_damaged_ledger_reads_as_an_empty_room_and_is_replaced(tmp_path):
    (tmp_path / ".room").mkdir()
    (tmp_path / ".room" / "entries.json").write_text('{"entries": [{"owner": 5}, "x"], "cleared_at": "now"}')
    (tmp_path / ".room" / "names.json").write_text("[" * 100_000)
    assert room.entries(tmp_path) == [] and room.names(tmp_path) == {}
    run = fake_run(tmp_path, "r")
    assert room.record_runs(tmp_path, "tok", [run]) == 1
    room.set_name(tmp_path, "tok", "Ana")
    assert [r.name for r in room.rows(tmp_path)] == ["Ana"]


def test_only_jobs_from_the_dashboard_are_recorded(tmp_path):
    run = fake_run(tmp_path, "r")
    room.record_job(tmp_path, {"origin": "cli", "owner": "cli"}, [run])
    room.record_job(tmp_path, None, [run])
    room.record_job(tmp_path, {"origin": "dashboard", "owner": ""}, [run])
    assert room.entries(tmp_path) == []
    room.record_job(tmp_path, {"origin": "dashboard", "owner": "tok"}, [run])
    assert [e.owner for e in room.entries(tmp_path)] == [room.owner_key("tok")]
    # A folder that cannot be written costs the job nothing.
    room.record_job(tmp_path / "missing" / "deeper", {"origin": "dashboard", "owner": "tok"}, [run])


WRITER = """
import sys
from core.runs import room
runs_dir, token = sys.argv[1], sys.argv[2]
for i in range(40):
    room.record_runs(runs_dir, token, [f"{runs_dir}/{token}-{i}"])
    room.set_name(runs_dir, token, f"{token} {i}")
"""


def test_two_processes_recording_at_once_lose_nothing(tmp_path):
    root = Path(__file__).resolve().parents[3]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), token], cwd=root)
               for token in ("a", "b")]
    assert [writer.wait(60) for writer in writers] == [0, 0]
    runs = {e.run_id for e in room.entries(tmp_path)}
    assert runs == {f"{t}-{i}" for t in ("a", "b") for i in range(40)}
    assert set(room.names(tmp_path).values()) == {"a 39", "b 39"}
