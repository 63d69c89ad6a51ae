"""The figures. Each ratio compares two things measured in the same run, interleaved where they are
short, so a machine busy with other work slows both sides alike and the ratio stays meaningful."""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The full cats_vs_dogs after TFDS drops its corrupt files: 18,610 training + 4,652 validation images.
FULL_DATASET_IMAGES = 23_262
ARTICLE_TRANSFER_EPOCHS = 3
LONG_EPOCHS = 15
MODEL_PASS_IMAGES = 320


@dataclass(frozen=True)
class Setup:
    photos: Path  # folder of generated JPEGs, cats/ and dogs/
    backbone: Path  # MobileNetV2 SavedModel with random weights
    work: Path


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def cache_root(setup: Setup) -> Path:
    """This process's caches: a benchmark running beside another (a test, say) never clears its folders."""
    return setup.work / "cache" / str(os.getpid())


def _fresh_cache(setup: Setup, name: str) -> Path:
    """A new, empty cache folder, so a run cannot reuse features an earlier one stored."""
    import shutil

    folder = cache_root(setup) / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["LAB_CACHE_DIR"] = str(folder)
    return folder


def _data(setup: Setup):
    from core.settings.config import DataConfig

    return DataConfig(source=f"folder:{setup.photos}", image_size=224, batch_size=32)


def _timed_fit(data, train) -> tuple[float, object]:
    from core.data.sources import open_source
    from core.training.experiment import fit

    start = time.perf_counter()
    result = fit(open_source(data), data, train)
    return time.perf_counter() - start, result


def r1_training(setup: Setup, model_path: Path) -> dict:
    """The article's frozen fit (every image through the backbone every epoch) against cached features.

    Both are whole experiments as the Lab runs them, model building included, each from an empty cache.
    The uncached run decodes every image in every epoch, as on the full dataset (_decoding_every_epoch),
    for the article's 3 epochs; its 15-epoch time is extrapolated: the measured 3 epochs plus 12 more at
    the mean of its epochs 2 and 3. The cached run trains 15 epochs; its 3-epoch time is the time at
    which its third epoch ended. Then a second cached experiment on the same data shows what reusing
    the stored features costs. The cached model is saved to model_path (for R3).
    """
    from core.safety.model_files import save_model
    from core.settings.config import ModelKind, TrainConfig

    data = _data(setup)
    base = TrainConfig(model=ModelKind.TRANSFER, epochs=ARTICLE_TRANSFER_EPOCHS, handle=str(setup.backbone))
    _fresh_cache(setup, "r1-uncached")
    with _decoding_every_epoch():
        uncached_s, uncached = _timed_fit(data, _replace(base, cache_features=False))
    _fresh_cache(setup, "r1-cached")
    cached15_s, cached = _timed_fit(data, _replace(base, epochs=LONG_EPOCHS))
    cached_epoch_s = [row["seconds"] for row in cached.history]
    cached_s = cached15_s - sum(cached_epoch_s[ARTICLE_TRANSFER_EPOCHS:])
    reused_s, reused = _timed_fit(data, _replace(base, epochs=LONG_EPOCHS))
    save_model(cached.model, model_path, ["cats", "dogs"])

    epoch_s = [row["seconds"] for row in uncached.history]
    steady = statistics.mean(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
    uncached15_s = uncached_s + (LONG_EPOCHS - len(epoch_s)) * steady

    # The same runs scaled to cats_vs_dogs: fixed costs (model building, tracing) as measured, the
    # per-image costs (an uncached epoch, feature extraction, a head epoch) times 23,262 images.
    images = sum(_split_sizes(data))
    scale = FULL_DATASET_IMAGES / images
    head_epoch = statistics.mean(cached_epoch_s[1:])
    fixed_uncached = uncached_s - sum(epoch_s)
    fixed_cached = cached_s - cached.feature_seconds - sum(cached_epoch_s[:ARTICLE_TRANSFER_EPOCHS])

    def at_scale(epochs: int) -> tuple[float, float]:
        return (fixed_uncached + epochs * statistics.mean(epoch_s) * scale,
                fixed_cached + (cached.feature_seconds + epochs * head_epoch) * scale)

    full3, full15 = at_scale(ARTICLE_TRANSFER_EPOCHS), at_scale(LONG_EPOCHS)
    return {
        "images": images,
        "uncached_3_epochs_s": round(uncached_s, 2),
        "uncached_epoch_s": [round(s, 2) for s in epoch_s],
        "cached_3_epochs_s": round(cached_s, 2),
        "cached_feature_s": round(cached.feature_seconds, 2),
        "cached_epoch_s": [round(s, 3) for s in cached_epoch_s],
        "ratio_3_epochs": round(uncached_s / cached_s, 2),
        "uncached_15_epochs_s_extrapolated": round(uncached15_s, 2),
        "cached_15_epochs_s": round(cached15_s, 2),
        "ratio_15_epochs": round(uncached15_s / cached15_s, 2),
        "full_dataset_3_epochs_s": [round(t) for t in full3],
        "full_dataset_ratio_3_epochs": round(full3[0] / full3[1], 2),
        "full_dataset_15_epochs_s": [round(t) for t in full15],
        "full_dataset_ratio_15_epochs": round(full15[0] / full15[1], 2),
        "second_experiment_15_epochs_s": round(reused_s, 2),
        "second_experiment_features_from": reused.extra.get("feature_origin"),
        "goal_3_epochs": 2.5,
        "goal_15_epochs": 8.0,
        "met": uncached_s / cached_s >= 2.5 and uncached15_s / cached15_s >= 8.0,
    }


@contextlib.contextmanager
def _decoding_every_epoch():
    """The uncached fit as it runs on cats_vs_dogs, whose 23,262 resized images (14 GB as float32) are
    far over make_pipeline's memory-cache budget: every epoch decodes every image again, as the
    article's pipeline does. A split as small as the benchmark's validation split (280 images, 170 MB)
    would otherwise be held in memory after the first epoch, which only splits that small get."""
    import functools

    import core.data.sources
    import core.training.experiment

    original = core.training.experiment.make_pipeline
    core.training.experiment.make_pipeline = functools.partial(core.data.sources.make_pipeline, cache_budget_bytes=0)
    try:
        yield
    finally:
        core.training.experiment.make_pipeline = original


def _replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def _split_sizes(data) -> tuple[int, int]:
    from core.data.sources import TRAIN, VALIDATION, open_source

    info = open_source(data).info
    return info.split_size(TRAIN), info.split_size(VALIDATION)


def r2_pipeline(setup: Setup, repeats: int) -> dict:
    """Images/s of the input pipeline alone (files to resized float batches, no memory cache: what every
    epoch of a dataset too large to cache pays) against the backbone alone on batches already in memory.
    Also the two together, as feature extraction runs them: how close the backbone stays to its own speed."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    from core.data.sources import TRAIN, make_pipeline, open_source
    from core.settings.config import EXTRACT_BATCH_SIZE

    data = _data(setup)
    source = open_source(data)
    n = source.info.split_size(TRAIN)
    # The backbone is the slow side: a few hundred images time it as well as the whole split would.
    model_batches = -(-min(n, MODEL_PASS_IMAGES) // EXTRACT_BATCH_SIZE)
    layer = hub.KerasLayer(str(setup.backbone))
    call = tf.function(lambda x: layer(x, training=False), autograph=False,
                       input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
    batch = tf.constant(np.random.default_rng(0).random((EXTRACT_BATCH_SIZE, 224, 224, 3), np.float32))
    call(batch)

    def pipeline_pass() -> float:
        start = time.perf_counter()
        count = sum(int(y.shape[0]) for _, y in make_pipeline(source, TRAIN, data, training=True,
                                                                 cache_budget_bytes=0))
        return count / (time.perf_counter() - start)

    def backbone_pass() -> float:
        start = time.perf_counter()
        for _ in range(model_batches):
            call(batch).numpy()
        return model_batches * EXTRACT_BATCH_SIZE / (time.perf_counter() - start)

    def fed_pass() -> float:
        small = _replace(data, batch_size=EXTRACT_BATCH_SIZE)
        start = time.perf_counter()
        count = 0
        for x, _ in make_pipeline(source, TRAIN, small, training=False, cache_budget_bytes=0).take(model_batches):
            call(x).numpy()
            count += int(x.shape[0])
        return count / (time.perf_counter() - start)

    pipeline_pass()  # first pass pays for tracing the pipeline's functions
    pipe, backbone, fed = [], [], []
    for _ in range(repeats):
        pipe.append(pipeline_pass())
        backbone.append(backbone_pass())
        fed.append(fed_pass())
    pipe_rate, bb_rate, fed_rate = (statistics.median(v) for v in (pipe, backbone, fed))
    return {
        "images": n,
        "backbone_images": model_batches * EXTRACT_BATCH_SIZE,
        "pipeline_images_per_s": round(pipe_rate, 1),
        "backbone_images_per_s": round(bb_rate, 1),
        "extraction_images_per_s": round(fed_rate, 1),
        "ratio": round(pipe_rate / bb_rate, 2),
        "extraction_over_backbone": round(fed_rate / bb_rate, 2),
        "goal": 2.0,
        "met": pipe_rate / bb_rate >= 2.0,
    }


def r3_prediction(setup: Setup, model_path: Path, calls: int) -> dict:
    """The Predict page's path for one upload (bytes to probabilities) against a bare model call on an
    already prepared tensor; model.predict for comparison. Calls are interleaved, p50 of each."""
    import tensorflow as tf

    from core.data.images import decode_image
    from core.data.sources import preprocess
    from core.runs.predict import load_for_prediction, predict_bytes

    loaded = load_for_prediction(model_path)
    jpeg = next((setup.photos / "cats").glob("*.jpg"))
    data = jpeg.read_bytes()
    x = tf.stack([preprocess(decode_image(data, min_side=224), 224)])
    reloaded = loaded.model
    paths = {
        "predict_bytes": lambda: predict_bytes(loaded, [(jpeg.name, data)]),
        "bare_call": lambda: reloaded(x, training=False).numpy(),
        "model_predict": lambda: reloaded.predict(x, verbose=0),
    }
    for fn in paths.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(calls):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    p50 = {k: p50_ms(v) for k, v in samples.items()}
    ratio = p50["predict_bytes"] / p50["bare_call"]
    return {
        "image": f"{jpeg.name} ({len(data) // 1024} KB)",
        "calls": calls,
        "predict_bytes_p50_ms": round(p50["predict_bytes"], 2),
        "bare_call_p50_ms": round(p50["bare_call"], 2),
        "model_predict_p50_ms": round(p50["model_predict"], 2),
        "ratio": round(ratio, 3),
        "goal": 1.2,
        "met": ratio <= 1.2,
    }


def _start_child(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "benchmarks.child", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_child(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"benchmarks.child {proc.args[3]} took more than {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.child {proc.args[3]} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _child(args: list[str], timeout: float) -> dict:
    return _finish_child(_start_child(args), timeout)


def start_memory_runs(setup: Setup, feature_images: int) -> list[subprocess.Popen]:
    """Start the two R4 processes; peak memory does not depend on what else the machine runs meanwhile."""
    run_cache = _fresh_cache(setup, "r4-run")
    features_cache = _fresh_cache(setup, "r4-features")
    return [
        _start_child(["memory", "--data", f"folder:{setup.photos}", "--handle", str(setup.backbone),
                      "--cache", str(run_cache)]),
        _start_child(["features", "--images", str(feature_images), "--cache", str(features_cache)]),
    ]


def r4_memory(procs: list[subprocess.Popen]) -> dict:
    """Peak resident memory of a whole cached transfer run (a fresh process, every generated image),
    plus what each further image adds, extrapolated to 23,262 images.

    The per-image part is measured at scale in a second process: the feature-phase of a run (the
    features buffer, the file store, 3 epochs of the head) on synthetic features for that many images.
    Adding it to the real run's peak is conservative: the backbone's activations, which set the real
    run's peak, are gone by the time the head trains."""
    run, phase = (_finish_child(proc, timeout=900) for proc in procs)
    per_image = phase["added_bytes"] / phase["images"]
    estimate = run["peak_bytes"] + per_image * (FULL_DATASET_IMAGES - run["images"])
    return {
        "run": {k: run[k] for k in ("images", "peak_bytes", "seconds")},
        "feature_phase": {k: phase[k] for k in ("images", "added_bytes", "seconds")},
        "peak_gb": round(run["peak_bytes"] / 1e9, 3),
        "peak_images": run["images"],
        "bytes_per_image": round(per_image),
        "estimate_images": FULL_DATASET_IMAGES,
        "estimate_gb": round(estimate / 1e9, 3),
        "goal_gb": 1.5,
        "met": estimate / 1e9 <= 1.5,
    }


def r5_home_page(renders: int) -> dict:
    """AppTest's first run of streamlit_app.py in fresh processes (streamlit already imported, as in a
    server), and whether TensorFlow got imported on the way."""
    runs = [_child(["render", str(REPO / "streamlit_app.py")], timeout=180) for _ in range(renders)]
    seconds = statistics.median(r["seconds"] for r in runs)
    return {
        "renders": [round(r["seconds"], 3) for r in runs],
        "seconds": round(seconds, 3),
        "exceptions": max(r["exceptions"] for r in runs),
        "tensorflow_imported": any(r["tensorflow_imported"] for r in runs),
        "goal_s": 1.5,
        "met": seconds <= 1.5,
    }


def d_demo(setup: Setup, seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """D2: pretraining the demo backbone from nothing, in a fresh cache folder. D1: the demo's lesson, the
    transfer model's final validation accuracy minus the baseline's at the Quick demo's settings, per seed."""
    from core.models.demo_backbone import prepare_demo
    from core.training.lesson import DEMO_IMAGE_SIZE, compare_models, median_gap

    _fresh_cache(setup, "demo")
    start = time.perf_counter()
    demo = prepare_demo()
    prepare_seconds = time.perf_counter() - start
    results = compare_models(demo.source, str(demo.backbone), seeds)
    gap = median_gap(results)
    return {
        "D1": {"median_gap_points": round(gap * 100, 2), "goal_points": 10, "met": gap >= 0.10,
               "image_size": DEMO_IMAGE_SIZE,
               "seeds": [{"seed": r.seed, "baseline": r.baseline, "transfer": r.transfer} for r in results]},
        "D2": {"pretrain_seconds": demo.pretrain.seconds, "goal_seconds": 120, "met": demo.pretrain.seconds <= 120,
               "prepare_seconds": round(prepare_seconds, 2),
               "pretrain_cpu_seconds": demo.pretrain.cpu_seconds, "source_accuracy": demo.pretrain.source_accuracy,
               "source_images": demo.pretrain.source_images, "cpus": os.cpu_count()},
    }


def _timed_lines(cmd: list[str], env: dict, timeout: float) -> tuple[float, list[tuple[float, str]]]:
    """Run a process; (its wall seconds, [(seconds since start, line)]) for every line it printed, on
    either stream, timed as it arrived (carriage-return progress lines count as lines too)."""
    import selectors

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[tuple[float, str]] = []
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if time.perf_counter() - start > timeout:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{cmd[1:4]} took more than {timeout:.0f} s")
            if not sel.select(timeout=1.0):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            now = time.perf_counter() - start
            if not chunk:
                break
            pending += chunk.replace(b"\r", b"\n")
            *complete, pending = pending.split(b"\n")
            lines += [(now, text) for line in complete if (text := line.decode(errors="replace").strip())]
    proc.wait()
    wall = time.perf_counter() - start
    if pending.strip():
        lines.append((wall, pending.decode(errors="replace").strip()))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed:\n" + "\n".join(text for _, text in lines[-30:]))
    return wall, lines


def _phases(wall: float, lines: list[tuple[float, str]], marks: list[tuple[str, str]]) -> dict:
    """Seconds per phase: each phase runs from the first line starting with its mark (the first from
    the process's start) to the next phase's mark; the last one to the process's end."""
    starts = []
    for name, prefix in marks:
        at = 0.0 if prefix is None else next((t for t, text in lines if text.startswith(prefix)), None)
        if at is None:
            raise RuntimeError(f"no line starting with {prefix!r} in:\n" + "\n".join(t for _, t in lines[-30:]))
        starts.append((name, at))
    ends = [at for _, at in starts[1:]] + [wall]
    return {name: round(end - at, 2) for (name, at), end in zip(starts, ends)}


NOTEBOOK_PHASES = [("import", None), ("build", "Building the model"), ("fit", "Training"), ("save", "Saving"),
                   ("reload", "Reloading")]
# The Lab's own status lines (core.training.experiment) mark where each part of `core train` starts.
LAB_PHASES = [("import", None), ("open", "Opening "), ("build", "Building the model"),
              ("features", "Computing backbone features"), ("head", "Training the Dense head"),
              ("save", "Epoch {epochs}/{epochs}"), ("evaluate", "Evaluating on the validation split"),
              ("exit", "{runs}")]


def p0_whole_runs(setup: Setup, repeats: int) -> dict:
    """The article's notebook (benchmarks/notebook.py: 3 epochs with every image through the frozen
    backbone each epoch) against `python -m core train --model mobilenet_v2 --epochs 3`, each a whole
    process from the interpreter's start to its exit, on the same JPEGs and SavedModel.

    The two alternate (notebook, Lab, Lab, notebook, ...), so a machine that gets busier or quieter over
    time slows both sides alike; the ratio is that of their median wall times. The Lab always starts from
    an empty cache folder, so it computes the features. Phases come from the lines each prints as it goes.
    """
    epochs = ARTICLE_TRANSFER_EPOCHS
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    runs: dict[str, list[dict]] = {"notebook": [], "lab": []}
    order = [("notebook", "lab"), ("lab", "notebook")]
    for i in range(repeats):
        for side in order[i % 2]:
            work = _fresh_cache(setup, f"p0-{side}")
            if side == "notebook":
                cmd = [sys.executable, str(REPO / "benchmarks" / "notebook.py"), "--data", str(setup.photos),
                       "--handle", str(setup.backbone), "--epochs", str(epochs), "--output", str(work / "model.h5")]
                marks = NOTEBOOK_PHASES
            else:
                cmd = [sys.executable, "-m", "core", "train", "--model", "mobilenet_v2", "--epochs", str(epochs),
                       "--data", f"folder:{setup.photos}", "--handle", str(setup.backbone),
                       "--runs-dir", str(work / "runs")]
                # The run folder's path, printed once evaluation is done, is the exit mark.
                marks = [(name, mark and mark.format(epochs=epochs, runs=work / "runs"))
                         for name, mark in LAB_PHASES]
            wall, lines = _timed_lines(cmd, {**env, "LAB_CACHE_DIR": str(work)}, timeout=1800)
            phases = _phases(wall, lines, marks)
            if side == "lab":
                phases["evaluate"] = round(phases["evaluate"] + phases.pop("exit"), 2)
            runs[side].append({"seconds": round(wall, 2), "phases": phases})
    medians = {side: statistics.median(r["seconds"] for r in rows) for side, rows in runs.items()}
    ratio = medians["notebook"] / medians["lab"]

    def median_phases(rows: list[dict]) -> dict:
        return {k: round(statistics.median(r["phases"][k] for r in rows), 2) for k in rows[0]["phases"]}

    return {
        "images": sum(_split_sizes(_data(setup))),
        "epochs": epochs,
        "notebook_s": round(medians["notebook"], 2),
        "lab_s": round(medians["lab"], 2),
        "notebook_phases_s": median_phases(runs["notebook"]),
        "lab_phases_s": median_phases(runs["lab"]),
        "runs": runs,
        "ratio": round(ratio, 2),
        "goal": 2.5,
        "met": ratio >= 2.5,
    }


def p1_extraction(setup: Setup, repeats: int, images: int) -> dict:
    """Feature extraction as the Lab runs it (split_features: files decoded, resized, batched and pushed
    through the backbone, from an empty store) against the same backbone layer called on a batch already
    in memory, as a compiled function at the extraction batch size, over as many images. Passes alternate;
    the ratio is that of the medians.

    Also the same pipeline decoding alone (no backbone): when decoding and the backbone each keep every
    core busy, nothing overlaps them and extraction can reach at most decode / (backbone + decode) of the
    bare backbone's rate (bound_ratio)."""
    import tempfile

    import numpy as np
    import tensorflow as tf

    from core.data.sources import TRAIN, make_pipeline, open_source
    from core.models.architectures import build_model
    from core.settings.config import EXTRACT_BATCH_SIZE, ModelKind
    from core.training.features import FeatureStore, split_features

    data = _replace(_data(setup), limit=images)
    source = open_source(data)
    n = source.info.split_size(TRAIN)
    backbone = build_model(ModelKind.TRANSFER, 2, 224, str(setup.backbone)).layers[0]
    call = tf.function(lambda x: backbone(x, training=False), autograph=False,
                       input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
    batch = tf.constant(np.random.default_rng(0).random((EXTRACT_BATCH_SIZE, 224, 224, 3), np.float32))
    call(batch)

    def bare_pass() -> float:
        steps = -(-n // EXTRACT_BATCH_SIZE)
        start = time.perf_counter()
        for _ in range(steps):
            call(batch).numpy()
        return steps * EXTRACT_BATCH_SIZE / (time.perf_counter() - start)

    cache_root(setup).mkdir(parents=True, exist_ok=True)

    def extraction_pass() -> float:
        with tempfile.TemporaryDirectory(dir=cache_root(setup)) as folder:
            got = split_features(backbone, source, TRAIN, data, str(setup.backbone), store=FeatureStore(Path(folder)))
        return len(got.labels) / got.seconds

    def decode_pass() -> float:
        pipeline = make_pipeline(source, TRAIN, _replace(data, batch_size=EXTRACT_BATCH_SIZE), training=False,
                                 cache_budget_bytes=0)  # as split_features reads the split
        start, count = time.perf_counter(), 0
        for x, _y in pipeline:
            count += int(x.shape[0])
        return count / (time.perf_counter() - start)

    extraction_pass()  # the first pass pays for opening the files and the pipeline's one-off set-up
    bare, fed, decoded = [], [], []
    for i in range(repeats):
        passes = ((bare_pass, bare), (extraction_pass, fed), (decode_pass, decoded))
        for fn, out in passes[:: 1 if i % 2 == 0 else -1]:
            out.append(fn())
    bare_rate, fed_rate, decode_rate = statistics.median(bare), statistics.median(fed), statistics.median(decoded)
    bound = decode_rate / (bare_rate + decode_rate)
    return {
        "images": n,
        "batch_size": EXTRACT_BATCH_SIZE,
        "backbone_images_per_s": round(bare_rate, 1),
        "extraction_images_per_s": round(fed_rate, 1),
        "decode_images_per_s": round(decode_rate, 1),
        "bound_ratio": round(bound, 3),
        "ratio": round(fed_rate / bare_rate, 3),
        "goal": 0.9,
        "met": fed_rate / bare_rate >= 0.9,
    }


def p2_baseline_pipeline(setup: Setup, repeats: int, images: int, epochs: int) -> dict:
    """The baseline CNN's fit on the Lab's JPEG pipeline (make_pipeline, as training uses it) against the
    same fit on the same images already decoded and resized, held as one tensor in memory. Also the
    pipeline with its memory cache turned off, as on a dataset too large to keep: decoding every epoch.
    Same model and initial weights for all; fits alternate; images/s over all epochs, the first included."""
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from core.data.sources import TRAIN, make_pipeline, open_source
    from core.models.architectures import build_baseline, compile_model

    data = _replace(_data(setup), limit=images)
    source = open_source(data)
    n = source.info.split_size(TRAIN)
    xs, ys = [], []
    for x, y in make_pipeline(source, TRAIN, data, training=False):
        xs.append(x.numpy())
        ys.append(y.numpy())
    images_np, labels_np = np.concatenate(xs), np.concatenate(ys)
    images_t, labels_t = tf.constant(images_np), tf.constant(labels_np)
    del xs, images_np

    def datasets() -> dict:
        tensors = tf.data.Dataset.from_tensor_slices((images_t, labels_t))
        return {
            "tensors": tensors.shuffle(n, seed=data.seed).batch(data.batch_size).prefetch(tf.data.AUTOTUNE),
            "jpeg": make_pipeline(source, TRAIN, data, training=True),
            "jpeg_every_epoch": make_pipeline(source, TRAIN, data, training=True, cache_budget_bytes=0),
        }

    # One model per input, the same initial weights, compiled and traced once, out of the measured fits.
    tf_keras.utils.set_random_seed(data.seed)
    weights = build_baseline(2, 224).get_weights()
    warm = datasets()
    models = {}
    for name, ds in warm.items():
        models[name] = build_baseline(2, 224)
        models[name].set_weights(weights)
        compile_model(models[name], 1e-3)
        models[name].fit(ds.take(1), epochs=1, verbose=0)

    def fit(name: str, ds) -> float:
        start = time.perf_counter()
        models[name].fit(ds, epochs=epochs, verbose=0)
        return n * epochs / (time.perf_counter() - start)

    rates: dict[str, list[float]] = {k: [] for k in warm}
    for i in range(repeats):
        fresh = datasets()  # a fresh pipeline: its memory cache starts empty, as in a new experiment
        for name in list(fresh)[:: 1 if i % 2 == 0 else -1]:
            rates[name].append(fit(name, fresh[name]))
    rate = {k: statistics.median(v) for k, v in rates.items()}
    ratio = rate["jpeg"] / rate["tensors"]
    return {
        "images": n,
        "epochs": epochs,
        "tensors_images_per_s": round(rate["tensors"], 1),
        "jpeg_images_per_s": round(rate["jpeg"], 1),
        "jpeg_every_epoch_images_per_s": round(rate["jpeg_every_epoch"], 1),
        "ratio": round(ratio, 3),
        "ratio_every_epoch": round(rate["jpeg_every_epoch"] / rate["tensors"], 3),
        "goal": 0.95,
        "met": ratio >= 0.95,
    }
