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
from core.runs.folders import open_run

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
    (run_dir,) = list(runs.iterdir())
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
    assert main(["predict", "--model", str(bad), str(img)]) == 2
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
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Dataset folder")
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "folder:/no/such/folder"], "does not exist"),
    (["train", "--data", "imagenet"], "should look like 'tfds:NAME' or 'folder:PATH'"),
    (["train", "--model", "baseline", "--image-size", "32", "--data", "folder:."], "at least 46x46"),
    (["train", "--data", "tfds:cats_vs_dogs"], "network is unreachable"),
    (["train", "--handle", "not/a/real/handle/here/x/y"], "neither a URL nor an existing folder"),
    (["compare", "/no/such/run"], "does not exist"),
])
def test_user_errors_exit_2_with_one_message(args, message, capsys, tmp_path, demo_folder):
    args = [a.replace("folder:.", f"folder:{demo_folder}") for a in args]
    if args[0] == "train":
        args += ["--runs-dir", str(tmp_path)]
        if "--handle" in args:
            args += ["--data", f"folder:{demo_folder}", "--image-size", "64"]
    assert main(args) == 2
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


def test_efficiency_prints_both_models_accuracy_by_images_per_class(demo_folder, demo_backbone, capsys):
    assert main(["efficiency", "--data", f"folder:{demo_folder}", "--handle", str(demo_backbone), "--image-size",
                 "48", "--counts", "4", "2", "--baseline-epochs", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cells = [re.split(r"\s{2,}", line) for line in lines]
    assert cells[0] == ["images per class", "2", "4"]
    assert [row[0] for row in cells[2:4]] == ["Baseline CNN", "Transfer (backbone)"]
    assert all(cell.endswith("%") for row in cells[2:4] for cell in row[1:])
    assert lines[-1] == "Validation accuracy on 24 images."
