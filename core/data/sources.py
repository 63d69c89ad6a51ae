"""Dataset sources behind one interface, and the article's input pipeline.

A source knows its class names, per-split per-class counts and files it skipped, and yields decoded
(uint8 image, int label) examples per split. `make_pipeline` turns those into the article's batches:
resized to the model's input, float32 in [0, 1], shuffled (seeded) for training, mapped in parallel,
batched and prefetched. Decoded images are only kept in memory when the whole split fits a small budget.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.data.images import decode_image, file_image_size, is_image_name
from core.settings.config import MAX_CLASSES, DataConfig
from core.settings.errors import DataError, ImageError
from core.settings.files import read_json, write_json
from core.settings.source import Source

logger = logging.getLogger(__name__)

TRAIN, VALIDATION = "train", "validation"
SPLITS = (TRAIN, VALIDATION)
# Resized float32 images of a split are kept in memory only below this size (e.g. ~850 at 224x224).
DEFAULT_CACHE_BUDGET_BYTES = 512 * 1024**2


@dataclass
class DatasetInfo:
    source: str
    class_names: list[str]
    counts: dict[str, dict[str, int]]  # split -> class name -> number of images
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> number of files skipped
    skipped_files: list[str] = field(default_factory=list)  # the first few, to show the user
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_size(self, split: str) -> int:
        return sum(self.counts[split].values())

    def to_dict(self) -> dict:
        return asdict(self)


def _quotas(available: dict[int, int], total: int) -> dict[int, int]:
    """Stratified quotas: `total` items spread over classes in proportion to what each has."""
    have = sum(available.values())
    if total >= have:
        return dict(available)
    exact = {c: total * n / have for c, n in available.items()}
    quota = {c: int(v) for c, v in exact.items()}
    by_remainder = sorted(available, key=lambda c: exact[c] - quota[c], reverse=True)
    for c in by_remainder[: total - sum(quota.values())]:
        quota[c] += 1
    return quota


def check_class_count(count: int) -> None:
    """Refuse a dataset with more classes than a run may record (core.runs.schema lists at most MAX_CLASSES),
    before it is scanned, downloaded or unpacked: trained anyway, its run would be listed as damaged."""
    if count > MAX_CLASSES:
        raise DataError(f"This dataset has {count:,} classes; the Lab trains on at most {MAX_CLASSES:,}.")


def validation_limit(limit: int, val_fraction: float) -> int:
    """Validation images to keep with `limit` training images, in the same 80/20 proportion."""
    return max(1, round(limit * val_fraction / (1 - val_fraction)))


def validation_images(count: int, val_fraction: float = DataConfig.val_fraction) -> int:
    """Images of a class of `count` that a folder without train/ and val/ holds out (20% rounded, at least 1)."""
    return max(1, round(count * val_fraction)) if count > 1 else 0


class FolderSource:
    """`folder:PATH` with one sub-folder per class, or `train/` and `val/` (or `validation/`) inside."""

    def __init__(self, path: str | Path, config: DataConfig):
        self.root = Path(path).expanduser()
        self.config = config
        self._runtime_skipped = 0
        self._lock = threading.Lock()
        if not self.root.is_dir():
            raise DataError(f"Dataset folder '{self.root}' does not exist or is not a folder.")
        skipped: Counter = Counter()
        skipped_files: list[str] = []
        split_dirs = self._split_dirs()
        check_class_count(self._class_folders_with_images(split_dirs))
        if split_dirs:
            per_split = {s: self._scan(d, skipped, skipped_files) for s, d in split_dirs.items()}
            names = sorted(set(per_split[TRAIN]) | set(per_split[VALIDATION]))
        else:
            scanned = self._scan(self.root, skipped, skipped_files)
            names = sorted(scanned)
        notes = []
        empty = [n for n in names if not (per_split[TRAIN].get(n) if split_dirs else scanned.get(n))]
        if empty:
            notes.append(f"Class folders with no readable images were left out: {', '.join(empty)}.")
            names = [n for n in names if n not in empty]
        if len(names) < 2:
            found = f"only '{names[0]}'" if names else "none"
            raise DataError(
                f"'{self.root}' needs at least two class sub-folders with images in them (found {found}). "
                "Put each class's images in a sub-folder named after the class, e.g. cats/ and dogs/."
            )
        self.class_names = names
        index = {n: i for i, n in enumerate(names)}
        rng = random.Random(config.seed)
        self.files: dict[str, list[tuple[Path, int]]] = {TRAIN: [], VALIDATION: []}
        self.sizes: list[tuple[int, int]] = []
        if split_dirs:
            for split in SPLITS:
                for name, entries in sorted(per_split[split].items()):
                    if name in index:
                        self.files[split] += [(p, index[name]) for p, _ in entries]
                        self.sizes += [s for _, s in entries]
        else:
            for name in names:
                entries = sorted(scanned[name])
                rng.shuffle(entries)
                n_val = validation_images(len(entries), config.val_fraction)
                self.files[VALIDATION] += [(p, index[name]) for p, _ in entries[:n_val]]
                self.files[TRAIN] += [(p, index[name]) for p, _ in entries[n_val:]]
                self.sizes += [s for _, s in entries]
        if config.limit:
            self.files[TRAIN] = self._limited(self.files[TRAIN], config.limit, rng)
            self.files[VALIDATION] = self._limited(
                self.files[VALIDATION], validation_limit(config.limit, config.val_fraction), rng)
        counts = {}
        for split in SPLITS:
            rng.shuffle(self.files[split])
            if not self.files[split]:
                raise DataError(f"'{self.root}' has no readable images for the {split} split.")
            tally = Counter(label for _, label in self.files[split])
            counts[split] = {n: tally[i] for i, n in enumerate(names)}
        self.info = DatasetInfo(str(Source.folder(self.root)), names, counts, dict(skipped), skipped_files[:20], notes)

    def _split_dirs(self) -> dict[str, Path] | None:
        train = self.root / "train"
        val = next((self.root / n for n in ("val", "validation") if (self.root / n).is_dir()), None)
        if train.is_dir() and val is not None:
            return {TRAIN: train, VALIDATION: val}
        return None

    def _class_folders_with_images(self, split_dirs: dict[str, Path] | None) -> int:
        """Class folders holding at least one file named like an image, without reading any: a bound on the
        classes _scan will find, cheap enough to refuse thousands of them before reading every header."""
        names = set()
        for root in split_dirs.values() if split_dirs else [self.root]:
            for class_dir in root.iterdir():
                if class_dir.name in names or not class_dir.is_dir() or class_dir.name.startswith("."):
                    continue
                if any(is_image_name(p.name) and not p.name.startswith(".") and p.is_file() and not p.is_symlink()
                       for p in class_dir.rglob("*")):
                    names.add(class_dir.name)
        return len(names)

    @staticmethod
    def _scan(root: Path, skipped: Counter, skipped_files: list[str]) -> dict[str, list]:
        """Class name -> [(path, (width, height))] of the readable images under root/<class>/."""
        classes: dict[str, list] = {}
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            entries = classes.setdefault(class_dir.name, [])
            for path in sorted(class_dir.rglob("*")):
                if path.is_symlink() or not path.is_file() or path.name.startswith("."):
                    continue
                if not is_image_name(path.name):
                    skipped["not an image file"] += 1
                    skipped_files.append(str(path.relative_to(root)))
                    continue
                try:
                    entries.append((path, file_image_size(path)))
                except ImageError:
                    skipped["unreadable image"] += 1
                    skipped_files.append(str(path.relative_to(root)))
        return classes

    @staticmethod
    def _limited(files: list, limit: int, rng: random.Random) -> list:
        by_class: dict[int, list] = {}
        for item in files:
            by_class.setdefault(item[1], []).append(item)
        quota = _quotas({c: len(v) for c, v in by_class.items()}, limit)
        out = []
        for c, items in sorted(by_class.items()):
            out += rng.sample(items, quota[c])
        return out

    @property
    def runtime_skipped(self) -> int:
        """Images whose header read fine but whose pixel data failed to decode during training."""
        return self._runtime_skipped

    def note_skipped(self, n: int) -> None:
        """Count images found corrupt earlier, when their stored backbone features are reused."""
        with self._lock:
            self._runtime_skipped += n

    def examples(self, split: str, shuffle_seed: int | None = None, min_side: int | None = None):
        """(uint8 HxWx3 image, int64 label) examples, decoded in parallel; corrupt files are dropped."""
        import tensorflow as tf

        files = self.files[split]
        paths = tf.constant([str(p) for p, _ in files])
        labels = tf.constant([label for _, label in files], dtype=tf.int64)
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        if shuffle_seed is not None:
            # Shuffling file names is free; shuffling decoded images would hold them in memory.
            ds = ds.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)

        def load(path: bytes) -> np.ndarray:
            try:
                return decode_image(Path(path.decode()).read_bytes(), path.decode(), min_side=min_side)
            except (ImageError, OSError):
                with self._lock:
                    self._runtime_skipped += 1
                return np.zeros((0, 0, 3), np.uint8)

        def decode(path, label):
            image = tf.numpy_function(load, [path], tf.uint8, stateful=False)
            image.set_shape([None, None, 3])
            return image, label

        # Ordered output costs nothing measurable here and keeps a seed's runs (and cached features) identical.
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return without_autotune(ds.filter(lambda image, _: tf.shape(image)[0] > 0))

    def samples(self, n: int, seed: int) -> list[tuple[np.ndarray, str]]:
        files = self.files[TRAIN] + self.files[VALIDATION]
        picked = random.Random(seed).sample(files, min(n, len(files)))
        out = []
        for path, label in picked:
            try:
                out.append((decode_image(path.read_bytes(), path.name, min_side=160), self.class_names[label]))
            except (ImageError, OSError):
                continue
        return out

    def image_sizes(self) -> list[tuple[int, int]]:
        return list(self.sizes)


class TfdsSource:
    """`tfds:NAME`: a TFDS image-classification dataset, split 80/20 unless it has its own validation."""

    def __init__(self, name: str, config: DataConfig, data_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None):
        from core.data.downloads import cancel, dropped_while_preparing, open_builder, preparation
        from core.settings.paths import tfds_dir

        self.name = name
        self.config = config
        self.data_dir = Path(data_dir) if data_dir else tfds_dir()
        self.builder = open_builder(name, self.data_dir)
        features = self.builder.info.features
        if "image" not in features or "label" not in features or not hasattr(features["label"], "names"):
            raise DataError(
                f"TFDS dataset '{name}' is not an image-classification dataset "
                "(it needs an 'image' and a class 'label' feature)."
            )
        # Before preparing: a dataset the Lab cannot train on is not worth downloading.
        check_class_count(features["label"].num_classes)
        if not self.builder.is_prepared():
            try:
                for status in preparation(name, self.data_dir):
                    if progress:
                        progress(status.line())
            except KeyboardInterrupt:
                # Ctrl-C in a terminal: the worker runs in a session of its own, so stop it here.
                cancel(name, self.data_dir)
                raise
            # A builder made before preparing has no splits: read the prepared one.
            self.builder = open_builder(name, self.data_dir)
            features = self.builder.info.features
        self.class_names = list(features["label"].names)
        if "validation" in (self.builder.info.splits or {}):
            self.split_specs = {TRAIN: "train", VALIDATION: "validation"}
        else:
            pct = round(100 * (1 - config.val_fraction))
            self.split_specs = {TRAIN: f"train[:{pct}%]", VALIDATION: f"train[{pct}%:]"}
        limit = config.limit
        self.limits = ({TRAIN: limit, VALIDATION: validation_limit(limit, config.val_fraction)} if limit
                       else {TRAIN: None, VALIDATION: None})
        notes = ["With a limit, TFDS images are taken class by class in equal numbers (balanced)."] if limit else []
        self.info = DatasetInfo(str(Source.tfds(name)), self.class_names, self._counts(),
                                dropped_while_preparing(name), [], notes)

    runtime_skipped = 0  # TFDS drops corrupt images itself while preparing a dataset

    def _raw(self, split: str, shuffle_files: bool = False, decode: bool = True):
        from core.data.tfds_import import tfds as _tfds
        tfds = _tfds()

        decoders = None if decode else {"image": tfds.decode.SkipDecoding()}
        return self.builder.as_dataset(
            split=self.split_specs[split], as_supervised=True, shuffle_files=shuffle_files,
            decoders=decoders, read_config=tfds.ReadConfig(shuffle_seed=self.config.seed),
        )

    def _limited(self, ds, split: str):
        import tensorflow as tf

        limit = self.limits[split]
        if not limit:
            return ds
        per_class = _quotas({c: limit for c in range(len(self.class_names))}, limit)
        parts = [ds.filter(lambda _, y, c=c: tf.equal(y, c)).take(q) for c, q in per_class.items() if q]
        return functools.reduce(lambda joined, part: joined.concatenate(part), parts)

    def _counts(self) -> dict[str, dict[str, int]]:
        cache = self.data_dir / f"{self.name}.lab-counts.json"
        key = json.dumps([str(self.builder.info.version), self.split_specs, self.limits])
        stored = read_json(cache, dict)
        if stored is not None and stored.get("key") == key and "counts" in stored:
            return stored["counts"]
        counts = {}
        for split in SPLITS:
            labels = self._limited(self._raw(split, decode=False), split).map(lambda _, y: y)
            tally = Counter()
            for batch in labels.batch(4096).as_numpy_iterator():
                tally.update(batch.tolist())
            counts[split] = {n: int(tally.get(i, 0)) for i, n in enumerate(self.class_names)}
        if self.builder.is_prepared():
            # Counting reads the whole dataset once; a cache folder that cannot be written only costs speed.
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                write_json(cache, {"key": key, "counts": counts}, indent=None)
            except OSError:
                logger.warning("Could not cache TFDS counts in %s", cache)
        return counts

    def examples(self, split: str, shuffle_seed: int | None = None, min_side: int | None = None):
        import tensorflow as tf

        # A limited split must be the same images every epoch (the ones counted), so its files are read in
        # a fixed order and only the chosen images are shuffled, by make_pipeline's buffer.
        shuffle_files = shuffle_seed is not None and not self.limits[split]
        ds = self._limited(self._raw(split, shuffle_files=shuffle_files), split)
        channels = self.builder.info.features["image"].shape[-1]

        def to_rgb(x, y):
            # The models take RGB: grayscale datasets (mnist, ...) and RGBA ones are converted here.
            if channels == 1:
                x = tf.image.grayscale_to_rgb(x)
            elif channels == 4:
                x = x[..., :3]
            return x, tf.cast(y, tf.int64)

        return without_autotune(ds.map(to_rgb))

    def samples(self, n: int, seed: int) -> list[tuple[np.ndarray, str]]:
        ds = self.examples(VALIDATION).shuffle(256, seed=seed).take(n)
        return [(img, self.class_names[int(y)]) for img, y in ds.as_numpy_iterator()]

    def image_sizes(self, n: int = 500) -> list[tuple[int, int]]:
        import tensorflow as tf

        ds = self.examples(TRAIN).take(n).map(lambda x, _: tf.shape(x)[:2])
        return [(int(w), int(h)) for h, w in ds.as_numpy_iterator()]


def open_source(config: DataConfig, progress: Callable[[str], None] | None = None):
    """Open `config.source` ("tfds:NAME" or "folder:PATH"), or raise a DataError saying what is wrong."""
    source = Source.parse(config.source)
    if not source.kind or not source.value:
        raise DataError(f"Data source '{config.source}' should look like 'tfds:NAME' or 'folder:PATH'.")
    if source.is_folder:
        return FolderSource(source.value, config)
    if source.is_tfds:
        return TfdsSource(source.value.strip(), config, progress=progress)
    raise DataError(f"Unknown data source type '{source.kind}'; use 'tfds:NAME' or 'folder:PATH'.")


def without_autotune(ds):
    """ds with tf.data's autotuning off; every dataset made from it inherits the setting.

    An autotuned pipeline keeps a thread that re-tunes it after doubling sleeps (up to a minute), and
    deleting the pipeline's iterator waits for that thread, which TensorFlow does not always wake: a finished
    pipeline could hold the process idle for seconds (benchmarks/README.md). Without autotuning each parallel
    map runs as many calls at once as there are cores and prefetch sizes its own buffer, as fast as before.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def preprocess(image, image_size: int):
    """The article's preprocessing: resize to the model's input, then scale pixels to [0, 1]."""
    import tensorflow as tf

    image = tf.image.resize(image, (image_size, image_size))
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def make_pipeline(source, split: str, config: DataConfig, training: bool,
                  cache_budget_bytes: int = DEFAULT_CACHE_BUDGET_BYTES):
    """Batched (float32 images in [0,1], int64 labels) for one split, ready for `fit`."""
    import tensorflow as tf

    n = source.info.split_size(split)
    size = config.image_size
    fits_memory = n * size * size * 3 * 4 <= cache_budget_bytes
    shuffle_seed = config.seed if training and not fits_memory else None
    ds = source.examples(split, shuffle_seed=shuffle_seed, min_side=size)
    ds = ds.map(lambda x, y: (preprocess(x, size), y), num_parallel_calls=tf.data.AUTOTUNE)
    if fits_memory:
        # Small splits: decode and resize once, then every later epoch reads memory.
        ds = ds.cache()
        if training:
            ds = ds.shuffle(n, seed=config.seed, reshuffle_each_iteration=True)
    elif training and isinstance(source, TfdsSource):
        ds = ds.shuffle(256, seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size)
    if training and config.augment:
        # After the cache, so every epoch sees new variations of the same images; never on validation.
        augmenter = make_augmenter(config.seed)
        ds = ds.map(lambda x, y: (tf.clip_by_value(augmenter(x, training=True), 0.0, 1.0), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    # Under several workers (MultiWorkerMirroredStrategy) each one runs this pipeline and keeps its share of
    # every batch, so all take the same number of steps on the batches one process would see. AUTO would
    # shard TFDS's record files between the workers instead: uneven steps, differently composed batches.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def make_augmenter(seed: int):
    """Random horizontal flip, rotation (up to +-10% of a turn) and zoom (up to +-10%), seeded."""
    import tf_keras

    layers = tf_keras.layers
    return tf_keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.1, fill_mode="reflect", seed=seed + 1),
        layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
    ], name="augmentation")


def steps_per_epoch(source, split: str, batch_size: int) -> int:
    return max(1, math.ceil(source.info.split_size(split) / batch_size))

