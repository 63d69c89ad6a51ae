"""Run directories: complete, self-describing, atomic; a killed run never looks finished."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.runs.folders import (
    INCOMPLETE_PREFIX,
    RunWriter,
    clean_incomplete,
    list_runs,
    new_run_id,
    open_run,
    write_json,
)
from core.settings.config import DataConfig, TrainConfig, data_from_dict, train_from_dict
from core.settings.errors import LabError

ROOT = Path(__file__).resolve().parents[3]
RUN_FILES = {"config.json", "history.json", "metrics.json", "summary.txt", "layers.json", "model.h5",
             "evaluation.json", "evaluation"}  # the last two: the validation evaluation written after saving


@pytest.mark.parametrize("kind", ["baseline", "mobilenet_v2"])
def test_run_directory_holds_every_file(trained_runs, kind):
    run_dir = trained_runs[kind]
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    assert not run_dir.name.startswith(".")


@pytest.mark.parametrize("kind", ["baseline", "mobilenet_v2"])
def test_config_has_everything_to_repeat_the_run(trained_runs, demo_folder, demo_backbone, kind):
    config = json.loads((trained_runs[kind] / "config.json").read_text())
    data, train = data_from_dict(config["data"]), train_from_dict(config["train"])
    assert isinstance(data, DataConfig) and isinstance(train, TrainConfig)
    assert data.source == f"folder:{demo_folder}"
    assert (data.image_size, data.batch_size, data.seed, data.val_fraction, data.limit) == (64, 16, 42, 0.2, None)
    assert train.model.value == kind and train.handle == str(demo_backbone)
    assert config["epochs"] == train.resolved_epochs
    assert config["class_names"] == ["circles", "squares"]
    versions = config["versions"]
    for package in ("python", "tensorflow", "tf-keras", "tensorflow-hub", "tensorflow-datasets", "numpy"):
        assert versions[package], package
    assert config["dataset"]["counts"]["train"] == {"circles": 48, "squares": 48}


def test_history_and_metrics_describe_every_epoch(trained_runs):
    record = open_run(trained_runs["baseline"])
    assert len(record.history) == 3
    for row in record.history:
        assert set(row) == {"loss", "accuracy", "val_loss", "val_accuracy", "seconds", "phase"}
        assert row["phase"] == "train"  # the baseline has no frozen or fine-tuning phase
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["val_accuracy"] <= 1 and row["seconds"] > 0
    m = record.metrics
    assert m["model"] == "baseline" and m["epochs_completed"] == 3 and m["stopped_early"] is False
    assert m["final_val_accuracy"] == record.history[-1]["val_accuracy"]
    assert m["best_val_accuracy"] == max(r["val_accuracy"] for r in record.history)
    assert record.history[m["best_epoch"] - 1]["val_accuracy"] == m["best_val_accuracy"]
    assert m["total_params"] == m["trainable_params"] > 0
    assert (m["train_images"], m["val_images"]) == (96, 24)
    assert m["model_size_mb"] == pytest.approx(record.model_path.stat().st_size / 1e6, abs=1e-3)
    assert "baseline_cnn" in record.summary
    layers = json.loads((record.path / "layers.json").read_text())
    assert [row["type"] for row in layers][:2] == ["Conv2D", "MaxPooling2D"]


def test_list_runs_finds_both_runs_newest_first(trained_runs):
    listing = list_runs(trained_runs["dir"])
    assert [r.path for r in listing.runs] == [trained_runs["mobilenet_v2"], trained_runs["baseline"]]
    assert listing.incomplete == []
    assert all(r.class_names == ["circles", "squares"] and r.image_size == 64 for r in listing.runs)


def test_open_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(LabError, match="does not exist"):
        open_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(LabError, match="missing history.json, metrics.json, model.h5"):
        open_run(tmp_path / "half")


def test_write_json_leaves_no_temporary_files(tmp_path):
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def _published_copy(src: Path, runs: Path, name: str) -> Path:
    writer = RunWriter(runs, name)
    for f in (p for p in src.iterdir() if p.is_file()):
        writer.path(f.name).write_bytes(f.read_bytes())
    return writer.publish()


def test_unpublished_writer_never_looks_complete(trained_runs, tmp_path):
    good = _published_copy(trained_runs["baseline"], tmp_path, new_run_id("baseline"))
    writer = RunWriter(tmp_path, new_run_id("baseline"))
    for f in (p for p in trained_runs["baseline"].iterdir() if p.is_file()):  # written, never renamed into place
        writer.path(f.name).write_bytes(f.read_bytes())
    listing = list_runs(tmp_path)
    assert [r.path for r in listing.runs] == [good]
    assert listing.incomplete == [writer.tmp]
    # its writer is this live process: cleaning must leave it alone
    assert clean_incomplete(tmp_path) == [] and writer.tmp.is_dir()
    writer.abandon()
    assert list_runs(tmp_path).incomplete == []


def test_publish_refuses_a_run_missing_files(tmp_path):
    writer = RunWriter(tmp_path, "r1")
    writer.json("config.json", {})
    with pytest.raises(RuntimeError, match="missing"):
        writer.publish()
    assert list_runs(tmp_path).runs == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_clean_incomplete_removes_dead_writers_only(trained_runs, tmp_path):
    dead = RunWriter(tmp_path, "dead-run")
    (dead.tmp / "owner.pid").write_text(str(_dead_pid()))
    live = RunWriter(tmp_path, "live-run")
    damaged = _published_copy(trained_runs["baseline"], tmp_path, "damaged-run")
    (damaged / "model.h5").unlink()  # a published run someone broke: shown, never deleted for them
    assert clean_incomplete(tmp_path) == [dead.tmp]
    assert not dead.tmp.exists() and live.tmp.is_dir() and damaged.is_dir()
    assert set(list_runs(tmp_path).incomplete) == {live.tmp, damaged}


def _run_child(script: str, env_extra: dict, kill_on: str | None = None, timeout: float = 180):
    """Run a Python child; with kill_on, SIGKILL it as soon as that text appears on its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **env_extra}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if kill_on and kill_on in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(seen), proc.stderr.read()


def test_process_killed_while_writing_the_run_leaves_nothing_complete(demo_folder, tmp_path):
    """SIGKILL between the first file and the rename: the worst moment for a run directory."""
    runs = tmp_path / "runs"
    code, _, err = _run_child(f"""
        import core.safety.model_files, core.data.network
        from core.settings.config import DataConfig, ModelKind, TrainConfig
        from core.training.experiment import run_experiment

        core.data.network.can_reach = lambda *a, **k: False
        real_save = core.safety.model_files.save_model

        def save_then_hang(model, path, class_names):
            real_save(model, path, class_names)
            print("MODEL WRITTEN", flush=True)
            import time
            time.sleep(120)

        core.safety.model_files.save_model = save_then_hang
        run_experiment(DataConfig(source="folder:{demo_folder}", image_size=48, batch_size=16, limit=32),
                       TrainConfig(model=ModelKind.BASELINE, epochs=1), {str(runs)!r})
    """, {"LAB_CACHE_DIR": str(tmp_path / "cache")}, kill_on="MODEL WRITTEN")
    assert code == -signal.SIGKILL, err[-2000:]
    (left,) = list(runs.iterdir())
    assert left.name.startswith(INCOMPLETE_PREFIX) and (left / "model.h5").is_file()
    listing = list_runs(runs)
    assert listing.runs == [] and listing.incomplete == [left]
    assert clean_incomplete(runs) == [left]
    assert list(runs.iterdir()) == []


def test_cli_training_killed_mid_epoch_leaves_nothing(demo_folder, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = _run_child(f"""
        import sys
        import core.data.network
        core.data.network.can_reach = lambda *a, **k: False
        from core.cli import main
        sys.exit(main(["train", "--model", "baseline", "--data", "folder:{demo_folder}", "--image-size", "48",
                       "--epochs", "500", "--batch-size", "8", "--runs-dir", {str(runs)!r}]))
    """, {"LAB_CACHE_DIR": str(tmp_path / "cache")}, kill_on="Epoch 1/500")
    assert code == -signal.SIGKILL, err[-2000:]
    assert "Epoch 1/500" in out
    assert list_runs(runs).runs == []
    leftovers = [p for p in runs.iterdir() if p.name != ".jobs"] if runs.exists() else []
    assert all(p.name.startswith(INCOMPLETE_PREFIX) for p in leftovers)
    # The dashboard listed the training while it ran; now it shows it as failed, in one line.
    from core.training.board import Board

    Board(runs, max_concurrent=1).pump()
    (view,) = Board(runs, max_concurrent=1).views()
    assert view.origin == "cli" and view.snapshot.phase == "failed"
    assert view.snapshot.message.startswith("The training process ended without reporting a result")


@pytest.mark.parametrize("name,text", [("config.json", "[1, 2]"), ("metrics.json", "null"),
                                       ("history.json", '{"loss": 1}'), ("history.json", "[1, 2]")])
def test_valid_json_of_the_wrong_shape_marks_a_run_damaged(trained_runs, tmp_path, name, text):
    import shutil

    run = tmp_path / "20250101-000000-baseline-odd"
    shutil.copytree(trained_runs["baseline"], run)
    (run / name).write_text(text)
    with pytest.raises(LabError, match=name.split(".")[0]):
        open_run(run)
    listing = list_runs(tmp_path)
    assert listing.runs == [] and listing.incomplete == [run]


def test_a_writer_killed_before_recording_its_pid_is_cleaned_after_a_minute(tmp_path):
    import time

    fresh, orphan = tmp_path / f"{INCOMPLETE_PREFIX}fresh", tmp_path / f"{INCOMPLETE_PREFIX}orphan"
    fresh.mkdir()  # a writer may be between creating its folder and writing owner.pid
    orphan.mkdir()
    long_ago = time.time() - 120
    os.utime(orphan, (long_ago, long_ago))
    assert clean_incomplete(tmp_path) == [orphan]
    assert fresh.is_dir() and not orphan.exists()


def test_write_json_from_many_threads_at_once_leaves_one_whole_file(tmp_path):
    import threading

    target, errors = tmp_path / "evaluation.json", []

    def writer(n: int) -> None:
        for round_ in range(150):
            try:
                write_json(target, {"writer": n, "round": round_, "rows": list(range(200))})
            except Exception as exc:  # any failure of a concurrent write is what is tested
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(target.read_text())["rows"] == list(range(200))
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation.json"]  # no temporary file left over


def test_write_json_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "metrics.json"
    write_json(target, {"old": True})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)  # where the bytes reach the disk
    with pytest.raises(OSError):
        write_json(target, {"old": False})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
