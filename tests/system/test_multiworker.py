"""`python -m core train --strategy multiworker` as real worker processes on loopback ports, each with its own
TF_CONFIG: what one machine can show of training on several (CPU only; see docs/several-machines.md)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab_helpers import TEST_IMAGE_SIZE

from benchmarks.server import free_port
from core.models.distribute import TPU_ENV_VARIABLES
from core.runs.folders import list_runs, open_run

ROOT = Path(__file__).resolve().parents[2]
# Two workers with 8 images each and one process with 16 average the same gradients in every step (the
# batches are composed alike: each worker keeps its half of every global batch); only the order of float32
# sums differs. Measured: the transfer model's losses agree to 1e-7, so 1e-4 leaves room for other CPUs.
LOSS_TOLERANCE = 1e-4
# The baseline's Dropout draws its masks per replica, so its curve is close to one process's, not equal
# (measured: 0.003 apart after one epoch).
BASELINE_LOSS_TOLERANCE = 0.05
VAL_IMAGES = 16  # --limit 64 keeps 16 validation images: accuracies may differ by one image at most
# A lost peer is noticed by TensorFlow's coordination service heartbeats (10 s) or a closed connection
# (measured here: 7-12 s after a worker was killed, under 1 s after the chief was); this bound only tells a
# stop from a hang on a busy machine.
STOP_BOUND_SECONDS = 120


def worker_env(addresses: list[str], index: int, scratch: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(scratch),
           "TF_CONFIG": json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})}
    for name in TPU_ENV_VARIABLES:
        env.pop(name, None)
    return env


def start_workers(count: int, args: list[str], folder: Path) -> dict:
    """count `python -m core train --strategy multiworker` processes; worker i writes into folder/runs-i and
    keeps its temporary files in folder/tmp-i."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    addresses = [f"127.0.0.1:{p}" for p in sorted(ports)]
    procs = []
    for i in range(count):
        scratch = folder / f"tmp-{i}"
        scratch.mkdir(parents=True)
        out, err = open(folder / f"out-{i}", "w"), open(folder / f"err-{i}", "w")  # noqa: SIM115 (closed in finish)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "core", "train", "--strategy", "multiworker", "--peer-timeout", "120",
             "--runs-dir", str(folder / f"runs-{i}"), *args],
            cwd=ROOT, env=worker_env(addresses, i, scratch), stdout=out, stderr=err))
        out.close()
        err.close()
    return {"procs": procs, "addresses": addresses, "folder": folder}


def finish(workers: dict, timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    ended = []
    for i, proc in enumerate(workers["procs"]):
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in workers["procs"]:
                p.kill()
            pytest.fail(f"worker {i} did not end within {timeout} s: "
                        f"{(workers['folder'] / f'err-{i}').read_text()[-2000:]}")
        folder = workers["folder"]
        ended.append({"rc": proc.returncode, "out": (folder / f"out-{i}").read_text(),
                      "err": (folder / f"err-{i}").read_text(), "runs": folder / f"runs-{i}",
                      "tmp": folder / f"tmp-{i}"})
    return ended


def common_args(model: str, demo_folder: Path, demo_backbone: Path) -> list[str]:
    rate = "0.01" if model == "mobilenet_v2" else "0.001"
    return ["--model", model, "--data", f"folder:{demo_folder}", "--handle", str(demo_backbone), "--image-size",
            str(TEST_IMAGE_SIZE), "--epochs", "1", "--limit", "64", "--learning-rate", rate, "--seed", "42"]


@pytest.fixture(scope="module")
def two_workers(demo_folder, demo_backbone, tmp_path_factory) -> dict:
    """Both models, each trained by two workers with 8 images per step each (the pairs run at once)."""
    started = {model: start_workers(2, [*common_args(model, demo_folder, demo_backbone), "--batch-size", "8"],
                                    tmp_path_factory.mktemp(f"multiworker-{model}"))
               for model in ("baseline", "mobilenet_v2")}
    return {model: {"workers": finish(w), "addresses": w["addresses"]} for model, w in started.items()}


def one_process_history(model: str, demo_folder: Path, demo_backbone: Path) -> list[dict]:
    """The same settings in this process, on one device, with the workers' global batch of 16."""
    from core.data.sources import open_source
    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.training.experiment import fit

    data = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=16, limit=64, seed=42)
    train = TrainConfig(model=ModelKind(model), epochs=1, learning_rate=0.01 if model == "mobilenet_v2" else 0.001,
                        handle=str(demo_backbone), strategy="default")
    return fit(open_source(data), data, train).history


@pytest.mark.parametrize("model", ["mobilenet_v2", "baseline"])
def test_two_workers_train_like_one_process_with_their_global_batch_and_only_the_chief_writes(
        two_workers, model, demo_folder, demo_backbone):
    chief, other = two_workers[model]["workers"]
    for worker in (chief, other):
        assert worker["rc"] == 0, worker["err"][-3000:]
        assert "Traceback" not in worker["err"]
        assert not list(worker["tmp"].glob("lab-worker-*"))  # the other worker's scratch runs folder was removed
    run = open_run(Path(chief["out"].strip().splitlines()[-1]))
    assert run.path.parent == chief["runs"] and (run.path / "evaluation.json").is_file()
    dist = run.config["distribution"]
    assert {k: v for k, v in dist.items() if k != "devices"} == {
        "kind": "multiworker", "replicas": 2, "workers": two_workers[model]["addresses"],
        "per_replica_batch_size": 8, "global_batch_size": 16, "mixed_precision": False}
    assert run.config["data"]["batch_size"] == 8
    assert run.config["feature_cache_used"] is (model == "mobilenet_v2")  # the backbone's features, computed jointly
    assert not other["runs"].exists()
    assert [line.split("  ")[0] for line in other["out"].splitlines()] == ["Epoch 1/1"]  # its progress, no run
    assert "the chief writes the run" in other["err"]

    single = one_process_history(model, demo_folder, demo_backbone)
    tolerance = LOSS_TOLERANCE if model == "mobilenet_v2" else BASELINE_LOSS_TOLERANCE
    for one, two in zip(single, run.history, strict=True):
        for key in ("loss", "val_loss"):
            assert abs(one[key] - two[key]) <= tolerance, (key, one, two)
        for key in ("accuracy", "val_accuracy"):
            assert abs(one[key] - two[key]) <= 1 / VAL_IMAGES + 1e-6, (key, one, two)


def test_a_worker_killed_mid_epoch_stops_every_other_worker_with_one_line(demo_folder, demo_backbone, tmp_path):
    args = [*common_args("baseline", demo_folder, demo_backbone), "--epochs", "500", "--batch-size", "4",
            "--limit", "48", "--image-size", "48"]
    workers = start_workers(3, args, tmp_path)
    victim = workers["procs"][1]
    deadline = time.monotonic() + 300
    while "Epoch 1/" not in (tmp_path / "out-1").read_text():  # its second epoch has begun
        assert victim.poll() is None and time.monotonic() < deadline, (tmp_path / "err-1").read_text()[-3000:]
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    chief, _, last = finish(workers, timeout=STOP_BOUND_SECONDS)
    print(f"the other workers stopped {time.monotonic() - killed:.1f} s after one was killed")
    for index, survivor in ((0, chief), (2, last)):
        assert survivor["rc"] == 1, survivor["err"][-3000:]
        line = survivor["err"].strip().splitlines()[-1]
        assert line.startswith(f"error: Multi-worker training ended on this worker {index} "), line
        assert workers["addresses"][1] in line and "restart every worker" in line
        assert "Traceback" not in survivor["err"]
    listing = list_runs(chief["runs"])
    assert not listing.runs and not listing.incomplete
