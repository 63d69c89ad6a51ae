"""A full or read-only disk while a run is saved or evaluated: one line, never a half-published run, and
the run's path printed whenever it was published (OSError injected where the bytes are written)."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from lab_helpers import TEST_IMAGE_SIZE

from core.cli import main as cli
from core.runs.folders import list_runs
from core.settings.errors import LabError

FULL = OSError(errno.ENOSPC, "No space left on device")
READ_ONLY = OSError(errno.EROFS, "Read-only file system")


def raiser(exc: OSError):
    def fail(*args, **kwargs):
        raise exc
    return fail


def train_args(demo_folder: Path, runs: Path) -> list[str]:
    return ["train", "--model", "baseline", "--data", f"folder:{demo_folder}", "--epochs", "1", "--limit", "32",
            "--image-size", str(TEST_IMAGE_SIZE), "--batch-size", "16", "--runs-dir", str(runs)]


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(args)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("where, exc", [("model", FULL), ("json", FULL), ("folder", READ_ONLY), ("publish", READ_ONLY)])
def test_a_disk_failing_while_the_run_is_saved_leaves_nothing_and_says_one_line(where, exc, demo_folder, tmp_path,
                                                                                 monkeypatch):
    from core.runs import folders
    from core.safety import model_files

    runs = tmp_path / "runs"
    if where == "model":
        monkeypatch.setattr(model_files, "save_model", raiser(exc))
    elif where == "json":
        real = folders.write_json
        monkeypatch.setattr(folders, "write_json",
                            lambda path, data: raiser(exc)() if path.name == "metrics.json" else real(path, data))
    elif where == "folder":
        monkeypatch.setattr(folders.RunWriter, "__init__", raiser(exc))
    else:
        monkeypatch.setattr(folders.os, "rename", raiser(exc))
    code, out, err = run_cli(train_args(demo_folder, runs))
    assert code == 1 and out.count("\n") <= 2  # the epoch line; no run path
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert exc.strerror in line and str(runs) in line and "Traceback" not in err
    assert not runs.exists() or list(runs.iterdir()) == []  # neither published nor half-written


def test_a_disk_filling_during_evaluation_keeps_the_published_run_and_prints_its_path(demo_folder, tmp_path,
                                                                                      monkeypatch):
    from core.runs import folders

    runs = tmp_path / "runs"
    real = folders.write_json
    monkeypatch.setattr(folders, "write_json",
                        lambda path, data: raiser(FULL)() if path.name == "evaluation.json" else real(path, data))
    code, out, err = run_cli(train_args(demo_folder, runs))
    assert code == 0 and "Traceback" not in err
    [record] = list_runs(runs).runs
    assert out.strip().splitlines()[-1] == str(record.path)
    assert not (record.path / "evaluation.json").exists()
    assert not any((record.path / "evaluation").glob("*/*"))  # no half-written thumbnails


def test_evaluating_on_a_full_disk_keeps_the_previous_evaluation(trained_runs, tmp_path, monkeypatch):
    from core.runs import folders
    from core.runs.evaluate import evaluate_run

    run = Path(shutil.copytree(trained_runs["baseline"], tmp_path / "run"))
    before = (run / "evaluation.json").read_text()
    thumbnails = sorted(p.relative_to(run) for p in (run / "evaluation").rglob("*"))
    monkeypatch.setattr(folders.os, "write", raiser(FULL))  # where the bytes reach the disk
    with pytest.raises(LabError, match=r"^Could not store the evaluation in .* \(No space left on device\)"):
        evaluate_run(run)
    monkeypatch.undo()
    assert (run / "evaluation.json").read_text() == before
    assert json.loads(before)["wrong"] is not None
    assert sorted(p.relative_to(run) for p in (run / "evaluation").rglob("*")) == thumbnails
    assert not [p for p in os.listdir(run) if ".tmp-" in p]
