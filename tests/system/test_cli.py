"""The command line end to end: train -> predict -> compare -> runs, as a workshop host would type it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.cli import main
from core.runs.folders import list_runs, open_run

ROOT = Path(__file__).resolve().parents[2]
EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+)  loss \d+\.\d{4}  accuracy \d\.\d{4}  val_loss \d+\.\d{4}  "
                        r"val_accuracy \d\.\d{4}  \d+\.\ds$")


def python_m_core(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout, check=False)


def write_image(path: Path, colour=(220, 60, 40), size=(70, 50)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture(scope="module")
def cli_run(demo_folder, demo_backbone, tmp_path_factory):
    """`python -m core train` in a real subprocess, offline: a folder dataset and a local SavedModel."""
    runs = tmp_path_factory.mktemp("cli-runs")
    proc = python_m_core("train", "--model", "mobilenet_v2", "--data", f"folder:{demo_folder}",
                         "--handle", demo_backbone, "--image-size", "64", "--epochs", "3",
                         "--learning-rate", "0.01", "--batch-size", "16", "--runs-dir", runs)
    return proc, runs


def test_train_prints_one_line_per_epoch_and_the_run_dir_last(cli_run):
    proc, runs = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    epoch_lines = [line for line in lines if line.startswith("Epoch ")]
    assert len(epoch_lines) == 3
    assert all(EPOCH_LINE.match(line) for line in epoch_lines), epoch_lines
    run_dir = Path(lines[-1])
    assert run_dir.parent == runs and run_dir.is_dir()
    record = open_run(run_dir)
    assert record.model_kind == "mobilenet_v2" and len(record.history) == 3
    assert "Traceback" not in proc.stderr


def test_predict_subprocess_one_line_per_image_and_exit_1_on_any_failure(cli_run, tmp_path):
    _, runs = cli_run
    (run_dir,) = [r.path for r in list_runs(runs).runs]
    red = write_image(tmp_path / "red.png")
    blue = write_image(tmp_path / "blue.jpg", (40, 90, 220))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    proc = python_m_core("predict", "--model", run_dir, red, broken, blue)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{red}: ") and re.search(r"circles \d\.\d{4}  squares \d\.\d{4}", lines[0])
    assert lines[1].startswith(f"{broken}: error: ") and "not a readable image" in lines[1]
    assert lines[2].startswith(f"{blue}: ")
    assert "Traceback" not in proc.stderr


def test_predict_classifies_and_exits_0_when_all_succeed(trained_runs, tmp_path, capsys):
    red = write_image(tmp_path / "red.png")
    blue = write_image(tmp_path / "blue.png", (40, 90, 220))
    for model in (trained_runs["baseline"], trained_runs["mobilenet_v2"] / "model.h5"):
        assert main(["predict", "--model", str(model), str(red), str(blue)]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 2
        probs = [dict(re.findall(r"(\w+) (\d\.\d{4})", line.split("(", 1)[1])) for line in lines]
        assert all(set(p) == {"circles", "squares"} for p in probs)
        assert all(abs(sum(map(float, p.values())) - 1) < 2e-4 for p in probs)


def test_predict_missing_image_is_a_per_file_error(trained_runs, tmp_path, capsys):
    good = write_image(tmp_path / "ok.png")
    assert main(["predict", "--model", str(trained_runs["baseline"]), str(tmp_path / "gone.jpg"), str(good)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{tmp_path / 'gone.jpg'}: error: cannot read the file (No such file or directory)"
    assert lines[1].startswith(f"{good}: ")


def test_predict_with_a_bad_model_file_exits_with_a_message(tmp_path, capsys):
    bad = tmp_path / "model.h5"
    bad.write_bytes(b"not hdf5")
    img = write_image(tmp_path / "x.png")
    assert main(["predict", "--model", str(bad), str(img)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an HDF5" in err and "Traceback" not in err


def test_compare_prints_a_table_of_runs(trained_runs, capsys):
    base, transfer = trained_runs["baseline"], trained_runs["mobilenet_v2"]
    assert main(["compare", str(base), str(transfer)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    columns = [re.split(r"\s{2,}", line) for line in lines]  # cells are two spaces apart; names hold one
    assert columns[0] == ["run", "model", "epochs", "total params", "trainable", "s/epoch", "best val acc",
                          "final val acc", "model MB"]
    assert set(lines[1]) <= {"-", " "}
    rows = {cells[0]: cells for cells in columns[2:]}
    assert set(rows) == {base.name, transfer.name}
    metrics = open_run(transfer).metrics
    t = rows[transfer.name]
    assert t[1:5] == ["Transfer (backbone)", "8", f"{metrics['total_params']:,}", f"{metrics['trainable_params']:,}"]
    assert rows[base.name][1] == "Baseline CNN"
    assert t[6].endswith("%") and t[7].endswith("%")


def test_runs_lists_finished_runs_and_flags_incomplete_ones(trained_runs, capsys, tmp_path):
    assert main(["runs", "--runs-dir", str(trained_runs["dir"])]) == 0
    out = capsys.readouterr().out
    assert trained_runs["baseline"].name in out and trained_runs["mobilenet_v2"].name in out

    (tmp_path / ".incomplete-x").mkdir()
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"No finished runs in {tmp_path}.",
                                f"incomplete (not shown): {tmp_path / '.incomplete-x'}"]


def test_train_with_folder_and_baseline_in_process(demo_folder, tmp_path, capsys):
    code = main(["train", "--model", "baseline", "--data", f"folder:{demo_folder}", "--image-size", "48",
                 "--epochs", "1", "--limit", "40", "--runs-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert EPOCH_LINE.match(out[0]) and Path(out[-1]).parent == tmp_path
    assert open_run(out[-1]).metrics["train_images"] == 40


@pytest.mark.parametrize("args,message", [
    (["train", "--epochs", "0"], "argument --epochs: must be at least 1 (got 0)"),
    (["train", "--epochs", "-2"], "argument --epochs: must be at least 1 (got -2)"),
    (["train", "--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
    (["train", "--learning-rate", "abc"], "argument --learning-rate: 'abc' is not a number"),
    (["train", "--batch-size", "many"], "argument --batch-size: 'many' is not a whole number"),
    (["predict", "x.png"], "the following arguments are required: --model"),
    (["launch"], "invalid choice: 'launch'"),
])
def test_bad_options_exit_2_with_a_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_options_in_a_real_process_print_no_traceback(tmp_path):
    proc = python_m_core("train", "--epochs", "0")
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr and "Traceback" not in proc.stderr
    proc = python_m_core("train", "--data", f"folder:{tmp_path / 'missing'}", "--runs-dir", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Dataset folder")
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "folder:/no/such/folder"], "does not exist"),
    (["train", "--data", "imagenet"], "should look like 'tfds:NAME' or 'folder:PATH'"),
    (["train", "--model", "baseline", "--image-size", "32", "--data", "folder:."], "at least 46x46"),
    (["train", "--data", "tfds:cats_vs_dogs"], "network is unreachable"),
    (["train", "--handle", "not/a/real/handle/here/x/y"], "neither a URL nor an existing folder"),
    (["compare", "/no/such/run"], "does not exist"),
    (["download"], "network is unreachable and the TFDS dataset 'cats_vs_dogs'"),
    (["download", "--data", "folder:/data/pets"], "--data must be tfds:NAME"),
    (["download", "--handle", "https://tfhub.dev/google/x/1"], "the hub module 'https://tfhub.dev/google/x/1'"),
])
def test_user_errors_exit_1_with_one_message(args, message, capsys, tmp_path, demo_folder):
    args = [a.replace("folder:.", f"folder:{demo_folder}") for a in args]
    if args[0] == "train":
        args += ["--runs-dir", str(tmp_path)]
        if "--handle" in args:
            args += ["--data", f"folder:{demo_folder}", "--image-size", "64"]
    assert main(args) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress notes may come first; the error closes the output
    assert last.startswith("error: ") and message in last and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_demo_writes_a_dataset_and_names_the_cached_pretrained_backbone(tmp_path, capsys, pretrained_demo):
    assert main(["demo", str(tmp_path), "--per-class", "2"]) == 0
    out = capsys.readouterr().out
    assert f"Dataset: folder:{tmp_path / 'scenes'}" in out and f"Hub handle: {pretrained_demo.backbone}" in out
    assert sorted(p.name for p in (tmp_path / "scenes").iterdir() if p.is_dir()) == ["arrows", "crescents", "hearts"]
    assert len(list((tmp_path / "scenes" / "hearts").glob("*.jpg"))) == 2


def test_every_run_records_the_articles_reload_check_and_evaluate_prints_it(cli_run):
    _, runs = cli_run
    (run_dir,) = [r.path for r in list_runs(runs).runs]
    check = open_run(run_dir).metrics["reload_check"]
    assert check["max_abs_diff"] == 0.0 and check["file"] == "model.h5"
    assert check["images"] == min(32, open_run(run_dir).metrics["val_images"]) and check["reload_seconds"] > 0
    proc = python_m_core("evaluate", run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("Reload check"))
    assert f"on {check['images']} validation images" in line and "is exactly 0.0" in line
    assert f"reloaded in {check['reload_seconds']:.2f} s" in line


def test_json_output_for_scripts(cli_run, tmp_path):
    import json

    _, runs = cli_run
    (run_dir,) = [r.path for r in list_runs(runs).runs]
    record = open_run(run_dir)
    listed = json.loads(python_m_core("runs", "--json", "--runs-dir", runs).stdout)
    assert listed["incomplete"] == [] and [r["run_id"] for r in listed["runs"]] == [run_dir.name]
    summary = listed["runs"][0]
    assert summary["model"] == "mobilenet_v2" and summary["epochs"] == 3
    assert summary["class_names"] == ["circles", "squares"] and summary["dataset"] == record.config["data"]["source"]
    assert summary["metrics"]["final_val_accuracy"] == record.metrics["final_val_accuracy"]
    assert json.loads(python_m_core("compare", "--json", run_dir).stdout) == listed["runs"]

    red = write_image(tmp_path / "red.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    proc = python_m_core("predict", "--json", "--model", run_dir, red, broken)
    assert proc.returncode == 1
    good, bad = json.loads(proc.stdout)
    assert good["file"] == str(red) and set(good["probabilities"]) == {"circles", "squares"}
    assert good["label"] == max(good["probabilities"], key=good["probabilities"].get)
    assert good["confidence"] == good["probabilities"][good["label"]]
    assert bad["file"] == str(broken) and "not a readable image" in bad["error"]

    proc = python_m_core("evaluate", "--json", run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluation = json.loads(proc.stdout)
    assert evaluation["class_names"] == ["circles", "squares"]
    assert sum(map(sum, evaluation["matrix"])) == evaluation["images"] == record.metrics["val_images"]
    assert set(evaluation["per_class"][0]) >= {"precision", "recall", "f1", "support"}
    assert set(evaluation["macro"]) == {"precision", "recall", "f1"}
    assert evaluation["reload_check"] == record.metrics["reload_check"]


def test_version_names_the_lab_and_its_libraries():
    from core import __version__

    proc = python_m_core("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"Transfer Learning Lab {__version__} (tensorflow ")
    assert "tf-keras" in proc.stdout and "Python" in proc.stdout


def test_resume_continues_a_finished_run_as_a_new_run_naming_its_parent(cli_run, tmp_path):
    _, runs = cli_run
    (parent_dir,) = [r.path for r in list_runs(runs).runs]
    parent = open_run(parent_dir)
    proc = python_m_core("train", "--resume", parent_dir, "--epochs", "2", "--runs-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("Epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["4/5", "5/5"]
    child = open_run(proc.stdout.strip().splitlines()[-1])
    assert child.path.parent == tmp_path
    assert child.config["parent"] == {"run_id": parent.run_id, "path": str(parent.path), "epochs": 3}
    assert child.config["data"] == parent.config["data"] and child.config["train"]["epochs"] == 2
    assert child.history[:3] == parent.history and len(child.history) == 5
    # Adam's step count goes on from the parent's: its optimizer state came with the weights.
    steps_per_epoch = parent.metrics["optimizer_steps"] // 3
    assert child.metrics["optimizer_steps"] == parent.metrics["optimizer_steps"] + 2 * steps_per_epoch
    assert child.metrics["reload_check"]["max_abs_diff"] == 0.0
    assert open_run(parent_dir).history == parent.history  # the parent is left as it was


def test_resume_needs_epochs_and_a_finished_run(tmp_path):
    proc = python_m_core("train", "--resume", tmp_path)
    assert proc.returncode == 2 and "--resume needs --epochs N" in proc.stderr
    proc = python_m_core("train", "--resume", tmp_path, "--epochs", "1", "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 1 and "not a complete run folder" in proc.stderr and "Traceback" not in proc.stderr


def test_balanced_class_weights_are_recorded_with_the_run(demo_folder, tmp_path):
    import shutil

    data = tmp_path / "imbalanced"
    shutil.copytree(demo_folder / "circles", data / "circles")
    (data / "squares").mkdir()
    for image in sorted((demo_folder / "squares").iterdir())[:15]:
        shutil.copy(image, data / "squares")
    proc = python_m_core("train", "--model", "baseline", "--data", f"folder:{data}", "--image-size", "48",
                         "--epochs", "1", "--class-weight", "balanced", "--runs-dir", tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = open_run(proc.stdout.strip().splitlines()[-1]).config
    counts = config["dataset"]["counts"]["train"]
    assert counts["circles"] > 3 * counts["squares"]
    total = counts["circles"] + counts["squares"]
    assert config["train"]["class_weight"] == "balanced"
    assert config["class_weights"] == {name: pytest.approx(total / (2 * n)) for name, n in counts.items()}
    proc = python_m_core("train", "--class-weight", "inverse")
    assert proc.returncode == 2 and "invalid choice: 'inverse'" in proc.stderr


def test_a_terminal_sees_keras_progress_bars(demo_folder, tmp_path):
    """On a terminal (a pseudo-terminal here) each epoch draws tf_keras's Progbar before its summary line."""
    import pty
    import threading

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", "--model", "baseline", "--data",
                             f"folder:{demo_folder}", "--image-size", "48", "--epochs", "2", "--limit", "40",
                             "--batch-size", "16", "--runs-dir", str(tmp_path)], cwd=ROOT, stdout=secondary,
                            stderr=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    os.close(secondary)
    chunks = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    _, err = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(primary)
    out = b"".join(chunks).decode()
    assert proc.returncode == 0, err[-3000:]
    assert len(re.findall(r"3/3 \[==============================\] - ", out)) == 2  # 40 images, batches of 16
    assert len(re.findall(r"Epoch \d/2  loss", out)) == 2


def test_export_says_how_the_tflite_file_was_checked(cli_run, tmp_path):
    import importlib.util

    _, runs = cli_run
    (run_dir,) = [r.path for r in list_runs(runs).runs]
    proc = python_m_core("export", run_dir, "--format", "tflite", "--out", tmp_path / "model.tflite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runtime = "ai-edge-litert" if importlib.util.find_spec("ai_edge_litert") else "tf.lite"
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("Converting to TFLite float32: about ")  # what it will cost, said first
    assert re.match(r"^TFLite float32, \d+\.\d+ MB, written in", lines[1])
    assert lines[2].startswith(f"checked with {runtime}: on 4 test images its probabilities are within ")
    assert lines[3] == str(tmp_path / "model.tflite")


def test_efficiency_prints_both_models_accuracy_by_images_per_class(demo_folder, demo_backbone, capsys):
    assert main(["efficiency", "--data", f"folder:{demo_folder}", "--handle", str(demo_backbone), "--image-size",
                 "48", "--counts", "4", "2", "--baseline-epochs", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cells = [re.split(r"\s{2,}", line) for line in lines]
    assert cells[0] == ["images per class", "2", "4"]
    assert [row[0] for row in cells[2:4]] == ["Baseline CNN", "Transfer (backbone)"]
    assert all(cell.endswith("%") for row in cells[2:4] for cell in row[1:])
    assert lines[-1] == "Validation accuracy on 24 images."
