"""The offline demo's backbone: a small CNN really pretrained, here, on a source task of its own.

The article's transfer model starts from MobileNetV2, trained on ImageNet. Offline there is no ImageNet
and no download, so the demo makes its own miniature of it: a small CNN trained once on twenty synthetic
shape classes (core.data.scenes.SOURCE_SHAPES) that are not the demo dataset's classes, then saved, without
its classification layer, as a Reusable SavedModel that hub.KerasLayer loads exactly as it loads the TF Hub
module. Training is seeded, so every machine builds the same network up to floating-point rounding.

The saved folder lives in the cache folder under a versioned name (BACKBONE_VERSION): a change to the
source task or the network makes a new folder instead of reusing one built the old way.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.models.hub import is_local
from core.settings.config import plain_label
from core.settings.errors import LabError
from core.settings.files import read_json
from core.settings.processes import launch_module, yield_cpu
from core.settings.source import Source

logger = logging.getLogger(__name__)

BACKBONE_VERSION = 1
BACKBONE_NAME = "Demo backbone (pretrained on synthetic shapes)"
INFO_FILE = "lab_backbone.json"  # beside saved_model.pb: what the backbone is, for honest labels
NATIVE_SIZE = 32  # the backbone resizes any input to this; 32 pixels keep pretraining within 2 minutes
# The image size the demo is trained at: the backbone sees 32 pixels whatever it is given, and 64 keeps the
# drawn shapes clear for the baseline while it trains many times faster than at the article's 224.
TRAINING_SIZE = 64
WIDTH = 16  # channels of the first convolution, doubled at each of the five stages
SOURCE_PER_CLASS = 450
SOURCE_EPOCHS = 8
SOURCE_BATCH = 32
SOURCE_LEARNING_RATE = 1e-3
SEED = 1234

# (fraction done in [0, 1], message): how a page or the CLI follows the pretraining.
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class PretrainReport:
    seconds: float  # generating the source images and training on them
    cpu_seconds: float  # CPU time of this process meanwhile: on an idle machine, seconds >= cpu_seconds / cores
    source_classes: int
    source_images: int
    source_accuracy: float  # on held-out source images: how well the source task was learned
    features: int


def _network(num_classes: int):
    """The feature extractor and the source classifier on top of it, sharing every layer but the last."""
    import tf_keras

    layers = tf_keras.layers
    inputs = tf_keras.Input((None, None, 3))
    x = layers.Resizing(NATIVE_SIZE, NATIVE_SIZE)(inputs)
    for stage in range(5):
        x = layers.Conv2D(WIDTH * 2 ** stage, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        if stage < 4:
            x = layers.MaxPooling2D(2)(x)
    # Average and maximum response of each filter, standardised over the source images: features
    # on a common scale, so a Dense layer on them learns in a few steps, as on MobileNetV2's.
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    features = layers.BatchNormalization(name="features")(x)
    logits = layers.Dense(num_classes, name="source_classes")(features)
    return tf_keras.Model(inputs, features, name="demo_backbone"), tf_keras.Model(inputs, logits)


def pretrain(path: str | Path, progress: Progress | None = None, seed: int = SEED) -> PretrainReport:
    """Train the backbone on the source shapes and save it to path (a new or empty folder)."""
    import numpy as np
    import tf_keras

    from core.data.demo import save_feature_extractor
    from core.data.scenes import SOURCE_SHAPES, source_images

    progress = progress or (lambda _fraction, _message: None)
    start, cpu_start = time.perf_counter(), time.process_time()
    progress(0.0, f"Drawing {SOURCE_PER_CLASS * len(SOURCE_SHAPES):,} source images of {len(SOURCE_SHAPES)} shapes ...")
    images, labels = source_images(SOURCE_PER_CLASS, NATIVE_SIZE, seed)
    x = images.astype(np.float32) / 255.0
    held_out = len(labels) // 10
    tf_keras.utils.set_random_seed(seed)
    extractor, classifier = _network(len(SOURCE_SHAPES))
    classifier.compile(optimizer=tf_keras.optimizers.Adam(SOURCE_LEARNING_RATE),
                       loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    progress(0.1, "Pretraining the demo backbone ...")
    epoch_ended = tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: progress(
        0.1 + 0.85 * (epoch + 1) / SOURCE_EPOCHS, f"Pretraining the demo backbone: epoch {epoch + 1}/{SOURCE_EPOCHS}, "
        f"source-task accuracy {(logs or {}).get('val_accuracy', float('nan')):.0%}"))
    history = classifier.fit(x[held_out:], labels[held_out:], batch_size=SOURCE_BATCH, epochs=SOURCE_EPOCHS,
                             validation_data=(x[:held_out], labels[:held_out]), verbose=0, callbacks=[epoch_ended])
    progress(0.96, "Saving the demo backbone ...")

    seconds = time.perf_counter() - start
    report = PretrainReport(round(seconds, 2), round(time.process_time() - cpu_start, 2), len(SOURCE_SHAPES), len(labels),
                            float(history.history["val_accuracy"][-1]), int(extractor.output_shape[-1]))
    save_feature_extractor(extractor, path, (None, None, 3))
    (Path(path) / INFO_FILE).write_text(json.dumps({
        "name": BACKBONE_NAME, "version": BACKBONE_VERSION, "source_shapes": sorted(SOURCE_SHAPES),
        "native_size": NATIVE_SIZE, "seed": seed, **report.__dict__}, indent=2))
    progress(1.0, f"Demo backbone pretrained in {seconds:.0f} s (source-task accuracy {report.source_accuracy:.0%}).")
    return report


def pretrain_in_child(path: str | Path, progress: Progress | None = None, module: str = __name__) -> PretrainReport:
    """pretrain(path) in a process of its own that yields the CPU, the caller only passing its progress on.

    For the dashboard's server: two minutes of Keras training in a script thread would hold its interpreter
    and its cores from every other visitor, and leave the training's memory in the server. Whatever stops
    the caller (a page's rerun raising in progress) stops the child too. module is the child's (tests).
    """
    from core.data.demo import follow_progress

    path = Path(path)
    status, log = path.parent / f".{path.name}.progress.json", path.parent / f".{path.name}.log"
    child = launch_module(module, [path, status], log, append_log=False)
    try:
        follow_progress(status, progress, lambda: child.poll() is not None)
    except BaseException:
        child.kill()
        child.wait()
        raise
    finally:
        status.unlink(missing_ok=True)
    info = read_json(path / INFO_FILE, dict) if child.returncode == 0 else None
    if not info:
        last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise LabError(f"Pretraining the demo backbone failed ({last[0][:200] if last else 'no output'}); "
                       f"its log is {log}.")
    log.unlink(missing_ok=True)
    return PretrainReport(**{f.name: info[f.name] for f in dataclasses.fields(PretrainReport)})


def main(argv: list[str]) -> int:
    """`python -m core.models.demo_backbone FOLDER STATUS`: pretrain into FOLDER, progress written to STATUS."""
    from core.data.demo import reporting

    if len(argv) != 2:
        print("usage: python -m core.models.demo_backbone FOLDER STATUS", file=sys.stderr)
        return 2
    yield_cpu()
    pretrain(argv[0], reporting(Path(argv[1])))
    return 0


def backbone_dir(root: Path | None = None) -> Path:
    """Where the pretrained demo backbone is kept: the cache folder, under this version's name."""
    from core.settings.paths import cache_dir

    return (root or cache_dir() / "demo") / f"backbone-v{BACKBONE_VERSION}"


def ensure_backbone(root: Path | None = None, progress: Progress | None = None,
                    separate_process: bool = False) -> tuple[Path, PretrainReport | None]:
    """(The pretrained backbone's folder, the report of its pretraining), pretrained first if this version is not
    cached yet, once however many ask at the same moment (core.data.demo.prepare_once). The report is None
    when the cached one was reused, or pretrained meanwhile by another session or process. A server passes
    separate_process (pretrain_in_child)."""
    from core.data.demo import prepare_once

    final = backbone_dir(root)
    report = prepare_once(final, lambda folder: (folder / INFO_FILE).is_file(),
                          lambda folder, report_to: (pretrain_in_child if separate_process else pretrain)(
                              folder, report_to), progress)
    if report is None:
        if progress:
            progress(1.0, "Demo backbone already pretrained (cached).")
        return final, None
    logger.info("pretrained the demo backbone into %s in %.1f s", final, report.seconds)
    return final, report


def backbone_name(handle: str) -> str | None:
    """The name a local backbone folder gives itself in its INFO_FILE; None for any other handle."""
    info = Path(handle) / INFO_FILE if handle and is_local(handle) else None
    data = read_json(info, dict) if info and info.is_file() else None
    return plain_label(data.get("name")) if data else None


@dataclass(frozen=True)
class DemoAssets:
    source: str  # "folder:PATH" of the demo dataset
    backbone: Path  # the pretrained backbone's SavedModel folder: the transfer model's hub handle
    pretrain: PretrainReport | None  # None when the cached backbone was reused


def prepare_demo(data_root: Path | None = None, per_class: int | None = None,
                 progress: Progress | None = None, separate_process: bool = False) -> DemoAssets:
    """Write the demo dataset (once per version and size) into data_root, default the cache folder's
    demo/, and pretrain the backbone into the cache folder unless it is there already (in a process of its
    own with separate_process, as the dashboard does)."""
    from core.data.demo import DEMO_PER_CLASS, make_scenes_folder, prepare_once
    from core.settings.paths import cache_dir

    per_class = per_class or DEMO_PER_CLASS
    folder = Path(data_root) if data_root else cache_dir() / "demo" / f"scenes-v{BACKBONE_VERSION}"
    stamp = f"version {BACKBONE_VERSION}, {per_class} per class\n"

    def ready(path: Path) -> bool:
        try:
            return (path / "ready").read_text() == stamp
        except OSError:
            return False

    def draw(tmp: Path, report_to: Progress) -> None:
        report_to(0.0, "Drawing the demo dataset (hearts, crescents, arrows) ...")
        make_scenes_folder(tmp, per_class)
        (tmp / "ready").write_text(stamp)

    # Drawn once however many sessions ask at the same moment; another size's folder is replaced.
    prepare_once(folder, ready, draw, progress)
    backbone, report = ensure_backbone(progress=progress, separate_process=separate_process)
    return DemoAssets(str(Source.folder(folder)), backbone, report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
