"""Peak memory of training at 224x224, one process per case, for choosing a preset's limits.

    python -m benchmarks.preset_memory [--limits 300 880 2000] [--cases baseline both] [--batch-size 16]

Each case runs one epoch the way the dashboard does (`core.training.experiment.run_experiment`: train, save the run
folder, evaluate it) on generated photo-like JPEGs of cats_vs_dogs' sizes and a MobileNetV2 with random
weights, after importing what a dashboard server holds (Streamlit, pandas, plotly). It prints one JSON
line per case: resident memory after the imports, the process's peak (ru_maxrss) and the seconds taken.
The numbers behind core/settings/presets.py's "cloud" preset.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "work"
# both: the baseline and then the cached transfer model in one process, as the dashboard's "Run both" does.
CASES = ("baseline", "cached", "uncached", "fine_tune", "both")


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def child(case: str, data_dir: Path, handle: Path, limit: int, batch_size: int, cache: Path) -> dict:
    os.environ["LAB_CACHE_DIR"] = str(cache)
    import pandas  # noqa: F401 - a dashboard server holds these before any training starts
    import plotly  # noqa: F401
    import streamlit  # noqa: F401
    import tensorflow  # noqa: F401

    from core.data.sources import TRAIN, VALIDATION, open_source
    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.training.experiment import run_experiment

    after_imports = _rss_bytes()
    data = DataConfig(source=f"folder:{data_dir}", image_size=224, batch_size=batch_size, limit=limit)
    baseline = TrainConfig(model=ModelKind.BASELINE, epochs=1)
    transfer = TrainConfig(model=ModelKind.TRANSFER, epochs=1, handle=str(handle), cache_features=case != "uncached",
                           fine_tune_epochs=1 if case == "fine_tune" else 0)
    runs = {"baseline": [baseline], "both": [baseline, transfer]}.get(case, [transfer])
    start = time.perf_counter()
    source = open_source(data)
    for train in runs:
        run_experiment(data, train, cache / "runs")  # trains, saves the run folder and evaluates it, as the page does
    return {"case": case, "limit": limit, "batch_size": batch_size,
            "train_images": source.info.split_size(TRAIN), "val_images": source.info.split_size(VALIDATION),
            "after_imports_mb": round(after_imports / 1e6), "end_rss_mb": round(_rss_bytes() / 1e6),
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6),
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.preset_memory")
    parser.add_argument("--limits", type=int, nargs="+", default=[300])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=1250, help="generated images per class")
    parser.add_argument("--child", nargs=6, metavar=("CASE", "DATA", "HANDLE", "LIMIT", "BATCH", "CACHE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case, data_dir, handle, limit, batch, cache = args.child
        print(json.dumps(child(case, Path(data_dir), Path(handle), int(limit), int(batch), Path(cache))))
        return 0

    from benchmarks.workload import make_backbone, make_photo_folder

    data_dir = make_photo_folder(WORK / f"photos-{args.per_class}", args.per_class)
    handle = make_backbone(WORK / "mobilenet_v2_random")
    for limit in args.limits:
        for case in args.cases:
            # A fresh cache folder: stored features from an earlier case would skip the backbone.
            cache = WORK / "cache" / f"memory-{case}-{limit}-{os.getpid()}"
            out = subprocess.run([sys.executable, "-m", "benchmarks.preset_memory", "--child", case, str(data_dir),
                                  str(handle), str(limit), str(args.batch_size), str(cache)],
                                 capture_output=True, text=True, check=False)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode or not lines:
                print(json.dumps({"case": case, "limit": limit, "error": out.stderr[-1500:]}), flush=True)
            else:
                print(lines[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
