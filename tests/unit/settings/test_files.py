"""The Lab's JSON files and worker processes: whole writes, locked updates, bounded reads, one launcher."""
from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from core.settings import files
from core.settings.files import (
    MAX_DEPTH,
    is_disk_full,
    read_json,
    too_deep,
    update_json,
    write_atomically,
    write_json,
)
from core.settings.processes import REPO_ROOT, launch_module, pid_alive

FULL = OSError(errno.ENOSPC, "No space left on device")


def raiser(exc: OSError):
    def fail(*args, **kwargs):
        raise exc
    return fail


# -- writing ------------------------------------------------------------------------------------------------

def test_a_json_file_is_written_whole_with_nothing_beside_it(tmp_path):
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    write_json(tmp_path / "a.json", {"x": [3]})
    write_atomically(tmp_path / "b.txt", "plain")
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [3]}
    assert (tmp_path / "b.txt").read_text() == "plain"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt"]


@pytest.mark.parametrize("where", ["write", "fsync", "replace", "dumps"])
def test_a_write_that_fails_anywhere_keeps_the_old_file_and_leaves_no_temporary(where, tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    write_json(target, {"old": True})
    if where == "dumps":
        monkeypatch.setattr(files.json, "dumps", raiser(FULL))
    else:
        monkeypatch.setattr(files.os, where, raiser(FULL))
    with pytest.raises(OSError) as raised:
        write_json(target, {"old": False, "rows": list(range(1000))})
    monkeypatch.undo()
    assert is_disk_full(raised.value)
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_session_choices_on_a_full_disk_leave_no_temporary_file(monkeypatch):
    from core.settings.choices import _folder, load_choices, new_token, save_choices

    token = new_token()
    save_choices(token, {"lab_source": "folder:/data"})
    before = sorted(p.name for p in _folder().iterdir())
    monkeypatch.setattr(os, "replace", raiser(FULL))
    with pytest.raises(OSError):
        save_choices(token, {"lab_source": "folder:/elsewhere"})
    monkeypatch.undo()
    assert sorted(p.name for p in _folder().iterdir()) == before
    assert load_choices(token) == {"lab_source": "folder:/data"}


def _count_up(path: str, times: int) -> None:
    for _ in range(times):
        update_json(Path(path), lambda counts: {**counts, "n": counts.get("n", 0) + 1})


def test_updates_from_two_processes_at_once_lose_nothing(tmp_path):
    target = tmp_path / "counts.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_count_up, args=(str(target), 50)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert json.loads(target.read_text()) == {"n": 100}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".counts.json.lock", "counts.json"]


def test_an_update_starts_afresh_from_a_damaged_file(tmp_path):
    target = tmp_path / "counts.json"
    target.write_text("[" * 100_000)
    assert update_json(target, lambda counts: {**counts, "n": counts.get("n", 0) + 1}) == {"n": 1}
    assert json.loads(target.read_text()) == {"n": 1}


# -- reading ------------------------------------------------------------------------------------------------

def test_a_deeply_nested_file_reads_as_missing_with_one_log_line(tmp_path, caplog):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with caplog.at_level(logging.WARNING, logger=files.__name__):
        assert read_json(path, list) is None
        assert read_json(path, list) is None  # pages read it again on every rerun: said once
    [record] = caplog.records
    assert "nested more than" in record.getMessage() and str(path) in record.getMessage()


def test_nesting_is_measured_outside_strings_and_up_to_the_limit(tmp_path):
    path = tmp_path / "ok.json"
    nested: list = []
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    path.write_text(json.dumps({"deep": nested[0], "text": "[[[[{{{{" * 1000}))
    assert read_json(path) == {"deep": nested[0], "text": "[[[[{{{{" * 1000}
    assert too_deep(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), MAX_DEPTH)
    assert not too_deep(b'{"a": "\\"]]]]"}', 1)


def test_measuring_an_unterminated_string_of_escapes_takes_no_time():
    hostile = b'"' + b'\\"[' * 300_000
    started = time.perf_counter()
    too_deep(hostile, MAX_DEPTH)
    assert time.perf_counter() - started < 1.0


def test_an_oversized_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as fh:
        fh.truncate(64 * 1024**2)  # sparse: 64 MB of zero bytes that cost no disk
    tracemalloc.start()
    try:
        assert read_json(path, max_bytes=1024**2) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024**2


@pytest.mark.parametrize("text, kind", [("[1, 2]", dict), ('{"a": 1}', list), ("true", int), ("{not json", dict),
                                        ("\xff\xfe", dict), ("1" * 5000, int)])
def test_what_is_not_the_expected_json_reads_as_missing(text, kind, tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(text.encode("latin-1"))
    assert read_json(path, kind) is None


def test_missing_files_and_folders_read_as_missing_without_a_log_line(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=files.__name__):
        assert read_json(tmp_path / "absent.json") is None
        assert read_json(tmp_path / "no-folder" / "absent.json") is None
        assert read_json(tmp_path) is None  # a folder where a file should be: said
    assert len(caplog.records) == 1


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    path = tmp_path / "pipe.json"
    os.mkfifo(path)
    assert read_json(path) is None


# -- processes ----------------------------------------------------------------------------------------------

def test_a_pid_is_alive_only_while_its_process_exists():
    assert pid_alive(os.getpid())
    for not_a_pid in (None, 0, -1, True, "123", 2**62):
        assert not pid_alive(not_a_pid)


def test_a_worker_module_starts_from_the_repository_in_a_session_of_its_own(tmp_path, monkeypatch):
    (tmp_path / "lab_probe_module.py").write_text(
        "import json, os, sys\n"
        "print(json.dumps({'own_session': os.getsid(0) == os.getpid(), 'cwd': os.getcwd(),\n"
        "                  'first': os.environ['PYTHONPATH'].split(os.pathsep)[0], 'python': sys.executable,\n"
        "                  'argv': sys.argv[1:], 'default': os.environ.get('LAB_PROBE_DEFAULT'),\n"
        "                  'set': os.environ.get('LAB_PROBE_SET')}))\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("LAB_PROBE_SET", "mine")
    log = tmp_path / "probe.log"
    log.write_text("earlier\n")
    process = launch_module("lab_probe_module", ["a", tmp_path], log,
                            env_defaults={"LAB_PROBE_DEFAULT": "default", "LAB_PROBE_SET": "default"})
    assert process.wait(60) == 0
    earlier, line = log.read_text().splitlines()
    seen = json.loads(line)
    assert earlier == "earlier"  # appended to, as a job's log across its tries
    assert seen == {"own_session": True, "cwd": str(REPO_ROOT), "first": str(REPO_ROOT), "python": sys.executable,
                    "argv": ["a", str(tmp_path)], "default": "default", "set": "mine"}
    process = launch_module("lab_probe_module", [], log, append_log=False)
    assert process.wait(60) == 0
    assert len(log.read_text().splitlines()) == 1  # a download's log starts afresh with each worker


def test_replace_path_puts_a_file_or_a_folder_in_place_of_either(tmp_path):
    old_folder = tmp_path / "export"
    (old_folder / "variables").mkdir(parents=True)
    (old_folder / "variables" / "old.bin").write_bytes(b"old")
    new_folder = tmp_path / "staged"
    new_folder.mkdir()
    (new_folder / "saved_model.pb").write_bytes(b"new")
    files.replace_path(new_folder, old_folder)  # a plain rename cannot replace a folder that has files in it
    assert sorted(p.name for p in old_folder.iterdir()) == ["saved_model.pb"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the old folder, moved aside, is gone

    staged_file = tmp_path / "model.h5.part"
    staged_file.write_bytes(b"h5")
    (tmp_path / "model.h5").write_bytes(b"older")
    files.replace_path(staged_file, tmp_path / "model.h5")
    assert (tmp_path / "model.h5").read_bytes() == b"h5" and not staged_file.exists()


# Prints the nice value, then the group's line: empty for a process in the init session's group, which the kernel
# does not list (a container's session, for one).
_YIELD = ("import os; from core.settings.processes import yield_cpu; yield_cpu(10); "
          "print(os.nice(0)); print(open('/proc/self/autogroup').read().strip())")


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="this kernel has no autogroup scheduling")
def test_a_worker_in_a_session_of_its_own_yields_as_a_group_and_leaves_the_servers_alone():
    import subprocess

    ours = Path("/proc/self/autogroup").read_text()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # A worker (a session of its own, as launch_module starts it): its group is weighed against the server's
    # session as a whole, so the group's nice value is what lets the server go first.
    leader = subprocess.run([sys.executable, "-c", _YIELD], env=env, capture_output=True, text=True, check=True,
                            start_new_session=True)
    nice, group = leader.stdout.splitlines()
    assert nice == "10" and group.endswith(" nice 10")
    # A child in the server's session (the timing process) lowers only itself: the group is the server's.
    child = subprocess.run([sys.executable, "-c", _YIELD], env=env, capture_output=True, text=True, check=True)
    nice, *group = child.stdout.splitlines()
    assert nice == "10" and "\n".join(group) == ours.strip()
    assert Path("/proc/self/autogroup").read_text() == ours


_LOG = ("import logging; from core.settings.processes import show_lab_messages; show_lab_messages(); "
        "show_lab_messages(); logging.getLogger('core.runs.export').info('Exported a run'); "
        "logging.getLogger('app_pages.predict').debug('a detail'); logging.getLogger('absl').info('chatter')")


def test_the_servers_log_shows_the_labs_own_messages_once_and_not_other_libraries_chatter():
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    shown = subprocess.run([sys.executable, "-c", _LOG], env=env, capture_output=True, text=True, check=True).stderr
    assert shown.count("INFO core.runs.export: Exported a run") == 1, shown  # called twice, still one line
    assert "a detail" not in shown and "chatter" not in shown
