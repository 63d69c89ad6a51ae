"""Strategy selection, the global batch, mixed precision, and a 2-replica MirroredStrategy run on the CPU.

The multi-device run needs the CPU split into two logical devices before TensorFlow starts, so it runs in
a fresh interpreter; everything else runs here on the one default device.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from lab_helpers import TEST_IMAGE_SIZE

from core.models.distribute import TPU_ENV_VARIABLES, Precision, choose_precision, choose_strategy, precision_policy
from core.runs.folders import open_run
from core.settings.config import DataConfig, ModelKind, TrainConfig
from core.settings.errors import LabError

ROOT = Path(__file__).resolve().parents[3]
# Two replicas with 8 images each and one device with 16 compute the same averaged gradient; only the
# order of floating-point sums differs, so losses agree to float32 rounding and accuracies to the image.
LOSS_TOLERANCE = 1e-4
# The baseline's Dropout masks differ between one device and two replicas (measured: losses 0.005 and 0.04
# apart after 1 and 2 epochs).
BASELINE_LOSS_TOLERANCE = 0.1


@pytest.fixture
def no_tpu(monkeypatch):
    for name in TPU_ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_auto_mirrors_over_several_gpus_and_otherwise_uses_one_device(no_tpu):
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    choice = choose_strategy("auto")
    if len(gpus) > 1:
        assert choice.kind == "mirrored" and choice.replicas == len(gpus)
    else:  # this project's machines: one CPU
        assert choice.kind == "default" and choice.replicas == 1 and len(choice.devices) == 1
        assert ("GPU" if gpus else "CPU") in choice.devices[0]
    assert choice.global_batch_size(32) == 32 * choice.replicas
    assert choice.uses_gpu == bool(gpus)


def test_explicit_choices_that_cannot_be_honoured_say_what_to_do(no_tpu):
    with pytest.raises(LabError, match="No TPU was found: set TPU_NAME"):
        choose_strategy("tpu")
    with pytest.raises(LabError, match="Unknown strategy 'gpu'; use one of auto, default, mirrored, tpu"):
        choose_strategy("gpu")


def test_mixed_precision_is_only_used_on_gpus_and_never_for_a_hub_module(no_tpu):
    cpu = choose_strategy("default")
    assert choose_precision(False, cpu) == Precision(False, "")
    on_cpu = choose_precision(True, cpu)
    assert not on_cpu.mixed and "only used on GPUs" in on_cpu.note

    class FakeGpuChoice:
        uses_gpu = True

    assert choose_precision(True, FakeGpuChoice()).mixed
    hub = choose_precision(True, FakeGpuChoice(), supported=False)
    assert not hub.mixed and "computes in float32" in hub.note


def test_models_built_under_mixed_precision_compute_in_float16_with_float32_logits():
    import tf_keras

    from core.models.architectures import build_model

    with precision_policy(True):
        model = build_model(ModelKind.BASELINE, 2, 64, "unused")
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # restored for the next model
    assert model.layers[0].compute_dtype == "float16"
    assert model.layers[-1].compute_dtype == "float32"
    out = model(np.zeros((2, 64, 64, 3), np.float32))
    assert out.dtype.name == "float32"


def test_a_run_records_its_distribution_and_global_batch(trained_runs):
    for kind in ("baseline", "mobilenet_v2"):
        dist = open_run(trained_runs[kind]).config["distribution"]
        assert dist["kind"] == "default" and dist["replicas"] == 1 and len(dist["devices"]) == 1
        assert dist["per_replica_batch_size"] == dist["global_batch_size"] == 16
        assert dist["mixed_precision"] is False and "note" not in dist


def test_asking_for_mixed_precision_without_a_gpu_trains_in_float32_and_says_so(demo_folder, tmp_path):
    from core.training.experiment import Callbacks, run_experiment

    data = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=16, limit=32)
    train = TrainConfig(model=ModelKind.BASELINE, epochs=1, mixed_precision=True, strategy="default")
    messages = []
    run = open_run(run_experiment(data, train, tmp_path, Callbacks(on_status=messages.append), evaluate=False))
    dist = run.config["distribution"]
    assert run.config["train"]["mixed_precision"] is True  # what was asked, beside what was used
    if choose_strategy("default").uses_gpu:  # on a GPU the request is honoured
        assert dist["mixed_precision"] is True and "note" not in dist
        return
    assert dist["mixed_precision"] is False
    assert "only used on GPUs" in dist["note"]
    assert any("only used on GPUs" in m for m in messages)


def test_a_forced_mixed_precision_run_trains_saves_and_reloads(demo_folder, tmp_path, monkeypatch):
    """What a GPU run does, forced on the CPU (float16 is slow there but works): the saved model reloads
    in a float32 process and gives float32 probabilities."""
    import tf_keras

    import core.models.distribute
    from core.runs.predict import load_for_prediction, predict_bytes
    from core.training.experiment import run_experiment

    monkeypatch.setattr(core.models.distribute, "choose_precision", lambda requested, choice, supported=True:
                        Precision(requested and supported, ""))
    data = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=16, limit=32)
    train = TrainConfig(model=ModelKind.BASELINE, epochs=1, mixed_precision=True)
    run = open_run(run_experiment(data, train, tmp_path, evaluate=False))
    assert run.config["distribution"]["mixed_precision"] is True
    assert all(np.isfinite(row["loss"]) for row in run.history)
    assert tf_keras.mixed_precision.global_policy().name == "float32"
    loaded = load_for_prediction(run.path)
    image = next((demo_folder / "circles").glob("*.jpg"))
    [result] = predict_bytes(loaded, [(image.name, image.read_bytes())])
    assert abs(sum(result.probabilities.values()) - 1) < 1e-5


def test_the_cli_takes_a_strategy_and_refuses_an_impossible_one(demo_folder, tmp_path, capsys, no_tpu):
    from core.cli import main

    code = main(["train", "--model", "baseline", "--data", f"folder:{demo_folder}", "--image-size", "64",
                 "--epochs", "1", "--strategy", "tpu", "--runs-dir", str(tmp_path)])
    assert code == 1
    assert "No TPU was found" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        main(["train", "--strategy", "gpu"])


# Runs in a fresh interpreter: the CPU is split before TensorFlow starts.
MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from core.models.distribute import split_cpu
    split_cpu(2)
    import core.data.network
    core.data.network.can_reach = lambda *a, **k: False
    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.data.sources import open_source
    from core.models.distribute import choose_strategy
    from core.settings.errors import LabError
    from core.training.experiment import fit, run_experiment

    folder, handle, runs = sys.argv[1:4]
    out = {"auto": choose_strategy("auto").kind, "mirrored_replicas": choose_strategy("mirrored").replicas}
    for name, kind, cache in (("cached", ModelKind.TRANSFER, True), ("uncached", ModelKind.TRANSFER, False),
                              ("baseline", ModelKind.BASELINE, False)):
        for strategy, batch in (("default", 16), ("mirrored", 8)):
            data = DataConfig(source="folder:" + folder, image_size=64, batch_size=batch, limit=64)
            rate = 0.01 if kind is ModelKind.TRANSFER else 0.001
            train = TrainConfig(model=kind, epochs=2, learning_rate=rate, handle=handle, cache_features=cache,
                                strategy=strategy)
            result = fit(open_source(data), data, train)
            out[name + "_" + strategy] = {"history": result.history, "distribution": result.extra["distribution"]}
    data = DataConfig(source="folder:" + folder, image_size=64, batch_size=8, limit=64)
    train = TrainConfig(model=ModelKind.TRANSFER, epochs=2, learning_rate=0.01, handle=handle,
                        strategy="mirrored")
    out["run_dir"] = str(run_experiment(data, train, Path(runs)))
    try:
        split_cpu(3)
    except LabError as exc:
        out["late_split"] = str(exc)
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def mirrored(demo_folder, demo_backbone, tmp_path_factory) -> dict:
    runs = tmp_path_factory.mktemp("mirrored-runs")
    # GPUs hidden: the replicas are the two halves of the CPU even where a GPU is present.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    for name in TPU_ENV_VARIABLES:
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(demo_folder), str(demo_backbone), str(runs)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_two_logical_cpus_give_mirrored_two_replicas_and_auto_leaves_them_alone(mirrored):
    assert mirrored["mirrored_replicas"] == 2
    assert mirrored["auto"] == "default"  # auto mirrors over GPUs only; CPU devices share the same cores
    assert "before TensorFlow has started" in mirrored["late_split"]


@pytest.mark.parametrize("name", ["cached", "uncached"])
def test_the_transfer_model_under_two_replicas_matches_one_device_with_the_same_global_batch(mirrored, name):
    single, multi = mirrored[f"{name}_default"], mirrored[f"{name}_mirrored"]
    assert multi["distribution"]["kind"] == "mirrored" and multi["distribution"]["replicas"] == 2
    assert multi["distribution"]["per_replica_batch_size"] == 8
    assert multi["distribution"]["global_batch_size"] == single["distribution"]["global_batch_size"] == 16
    assert len(single["history"]) == len(multi["history"]) == 2
    val_images = 16  # limit 64 -> 16 validation images
    for one, two in zip(single["history"], multi["history"]):
        for key in ("loss", "val_loss"):
            assert abs(one[key] - two[key]) <= LOSS_TOLERANCE, (key, one, two)
        for key in ("accuracy", "val_accuracy"):
            assert abs(one[key] - two[key]) <= 1 / val_images + 1e-6, (key, one, two)
    assert multi["history"][-1]["val_accuracy"] > 0.8  # it learned, on both


def test_the_baseline_under_two_replicas_stays_close_to_one_device(mirrored):
    """Dropout draws its masks per replica, so the baseline's curves are close to one device's, not equal."""
    single, multi = mirrored["baseline_default"], mirrored["baseline_mirrored"]
    assert multi["distribution"]["replicas"] == 2
    for one, two in zip(single["history"], multi["history"], strict=True):
        for key in ("loss", "val_loss"):
            assert abs(one[key] - two[key]) <= BASELINE_LOSS_TOLERANCE, (key, one, two)
    assert abs(single["history"][-1]["val_accuracy"] - multi["history"][-1]["val_accuracy"]) <= 1 / 16 + 1e-6


def test_a_mirrored_run_folder_records_two_replicas_and_is_evaluated_and_predicts_here(mirrored, demo_folder):
    from core.runs.predict import load_for_prediction, predict_bytes

    run = open_run(mirrored["run_dir"])
    dist = run.config["distribution"]
    assert dist == {"kind": "mirrored", "replicas": 2, "devices": ["/device:CPU:0", "/device:CPU:1"],
                    "per_replica_batch_size": 8, "global_batch_size": 16, "mixed_precision": False}
    assert run.config["data"]["batch_size"] == 8
    assert (run.path / "evaluation.json").is_file()  # evaluated through the reloaded .h5
    loaded = load_for_prediction(run.path)
    image = next((demo_folder / "squares").glob("*.jpg"))
    [result] = predict_bytes(loaded, [(image.name, image.read_bytes())])
    assert result.label == "squares"
