"""`python -m benchmarks --quick` runs end to end and reports every figure (their values are not judged here:
timings belong to the benchmark's own output, not to pass/fail)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "benchmarks" / "work"  # generated images and SavedModel are kept there between runs


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_benchmark_reports_every_figure(tmp_path):
    output = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LAB_CACHE_DIR", None)  # the benchmark chooses its own caches under its work folder
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "--quick", "--output", str(output)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=900)  # eight figures, on a shared 2-core machine
    assert proc.returncode == 0, out[-4000:]

    report = json.loads(output.read_text())
    assert report["mode"] == "quick"
    figures = report["figures"]
    assert sorted(figures) == ["P0", "P1", "P2", "R1", "R2", "R3", "R4", "R5"]
    expected = {
        "P0": ("ratio", "notebook_s", "lab_s"),
        "P1": ("ratio", "extraction_images_per_s", "backbone_images_per_s", "decode_images_per_s", "bound_ratio"),
        "P2": ("ratio", "ratio_every_epoch", "jpeg_images_per_s", "tensors_images_per_s"),
        "R1": ("ratio_3_epochs", "ratio_15_epochs", "uncached_3_epochs_s", "cached_3_epochs_s",
               "uncached_15_epochs_s_extrapolated", "cached_15_epochs_s"),
        "R2": ("ratio", "pipeline_images_per_s", "backbone_images_per_s"),
        "R3": ("ratio", "predict_bytes_p50_ms", "bare_call_p50_ms"),
        "R4": ("peak_gb", "estimate_gb", "bytes_per_image"),
        "R5": ("seconds",),
    }
    for figure, keys in expected.items():
        for key in keys:
            assert number(figures[figure][key]) and figures[figure][key] > 0, (figure, key, figures[figure])
        assert isinstance(figures[figure]["met"], bool)
    assert figures["R4"]["estimate_images"] == 23_262
    assert figures["R4"]["estimate_gb"] >= figures["R4"]["peak_gb"]
    assert figures["R1"]["second_experiment_features_from"] == {"train": "memory", "validation": "memory"}
    # Every phase of both whole runs was found in what they printed, and together they make up the run.
    p0 = figures["P0"]
    assert list(p0["notebook_phases_s"]) == ["import", "build", "fit", "save", "reload"]
    assert list(p0["lab_phases_s"]) == ["import", "open", "build", "features", "head", "save", "evaluate"]
    for side in ("notebook", "lab"):
        for run in p0["runs"][side]:
            assert all(s >= 0 for s in run["phases"].values())
            assert sum(run["phases"].values()) == pytest.approx(run["seconds"], abs=0.05)

    table = out[out.index("figure"):]
    for figure in ("P0", "P1", "P2", "R1", "R2", "R3", "R4", "R5"):
        assert f"\n{figure} " in table
    assert not (WORK / "cache" / str(proc.pid)).exists()  # its caches and model file are cleaned up
    assert not list(WORK.glob(f"r1-cached-model-{proc.pid}.h5"))


def test_cold_start_reports_time_to_a_ready_dataset_and_peak_memory(tmp_path):
    """The smallest archive TFDS accepts (62 photos beside the 1,738 files it must drop), end to end."""
    output = tmp_path / "cold_start.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "--cold-start", "--cold-start-images", "1800",
                             "--work-dir", str(tmp_path / "work"), "--output", str(output)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]

    c1 = json.loads(output.read_text())["figures"]["C1"]
    assert c1["files"] == 1800 and c1["examples"] == 62  # TFDS prepared what the Load then opened
    for key in ("seconds_to_ready", "prepare_s", "open_s", "peak_sum_gb", "peak_server_gb", "peak_worker_gb"):
        assert number(c1[key]) and c1[key] > 0, (key, c1)
    assert number(c1["download_s"]) and c1["download_s"] >= 0  # on loopback it may end between two polls
    assert c1["peak_sum_gb"] >= max(c1["peak_server_gb"], c1["peak_worker_gb"])
    assert isinstance(c1["met"], bool)
    assert "C1 " in out[out.index("figure"):]
    assert not list((tmp_path / "work" / "cold-start").glob("cache-*"))  # its empty cache is removed again
