"""Measurements that need a process of their own; each prints one JSON line.

    python -m benchmarks.child memory --data folder:PATH --handle PATH --cache DIR [--limit N]
    python -m benchmarks.child features --images N --cache DIR
    python -m benchmarks.child render PATH/streamlit_app.py
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def memory(args) -> dict:
    """A cached transfer run for the article's 3 epochs, as `python -m core train` would do it."""
    os.environ["LAB_CACHE_DIR"] = args.cache
    from core.data.sources import TRAIN, VALIDATION, open_source
    from core.runs.evaluate import evaluate_run
    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.training.experiment import fit, save_run

    data = DataConfig(source=args.data, image_size=224, batch_size=32, limit=args.limit)
    train = TrainConfig(model=ModelKind.TRANSFER, epochs=3, handle=args.handle)
    start = time.perf_counter()
    source = open_source(data)
    result = fit(source, data, train)
    # Saving and evaluating belong to the run too: the .h5 write and one pass over the validation images.
    run_dir = save_run(result, source, data, train, os.path.join(args.cache, "bench-runs"))
    evaluate_run(run_dir, model=result.model, source=source)
    return {
        "images": source.info.split_size(TRAIN) + source.info.split_size(VALIDATION),
        "feature_dim": int(result.model.layers[0].output_shape[-1]),
        "peak_bytes": peak_rss_bytes(),
        "seconds": round(time.perf_counter() - start, 2),
    }


def features(args) -> dict:
    """The part of a cached run that grows with the dataset, for `--images` images without a backbone:
    the features buffer and labels, storing them (a file, for large splits), and 3 epochs of the head."""
    os.environ["LAB_CACHE_DIR"] = args.cache
    import numpy as np
    import psutil
    import tf_keras

    from core.models.architectures import compile_model
    from core.training.features import FeatureKey, default_store, feature_batches

    dim, classes = 1280, 2  # MobileNetV2's feature vector; cats and dogs
    head = tf_keras.Sequential([tf_keras.Input((dim,)), tf_keras.layers.Dense(classes)])
    compile_model(head, 1e-3)
    rng = np.random.default_rng(0)
    warm = rng.random((64, dim), dtype=np.float32), rng.integers(0, classes, 64)
    # TensorFlow's one-off allocations (tracing, thread pools) happen here, outside the measured part.
    head.fit(feature_batches(*warm, 32, seed=0), validation_data=feature_batches(*warm, 32), epochs=1, verbose=0)
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    n_train = round(args.images * 0.8)
    arrays = {}
    for split, n in (("train", n_train), ("validation", args.images - n_train)):
        feats = np.empty((n, dim), np.float32)
        for i in range(0, n, 8):  # filled batch by batch, as extraction fills it
            feats[i:i + 8] = rng.random((min(8, n - i), dim), dtype=np.float32)
        labels = rng.integers(0, classes, n)
        default_store().put(FeatureKey(f"synthetic-{split}", {"split": split}), feats, labels)
        arrays[split] = (feats, labels)
    head.fit(feature_batches(*arrays["train"], 32, seed=0), validation_data=feature_batches(*arrays["validation"], 32),
             epochs=3, verbose=0)
    return {"images": args.images, "added_bytes": peak_rss_bytes() - before,
            "seconds": round(time.perf_counter() - start, 2)}


def render(args) -> dict:
    from streamlit.testing.v1 import AppTest

    start = time.perf_counter()
    app = AppTest.from_file(args.script, default_timeout=120)
    app.run()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "exceptions": len(app.exception), "tensorflow_imported": "tensorflow" in sys.modules}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.child")
    sub = parser.add_subparsers(dest="command", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("--data", required=True)
    mem.add_argument("--handle", required=True)
    mem.add_argument("--cache", required=True)
    mem.add_argument("--limit", type=int)
    phase = sub.add_parser("features")
    phase.add_argument("--images", type=int, required=True)
    phase.add_argument("--cache", required=True)
    page = sub.add_parser("render")
    page.add_argument("script")
    args = parser.parse_args(argv)
    out = {"memory": memory, "features": features, "render": render}[args.command](args)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
