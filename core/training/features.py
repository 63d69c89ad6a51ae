"""Backbone features computed once per split and kept for the next experiment.

A frozen backbone maps the same image to the same vector in every epoch, so pushing every image through
it again each epoch (the article's way) repeats the expensive part of training. Here each split's images
are streamed through the backbone once, in batches, and the (features, labels) arrays are kept:

- small splits in memory, in a bounded store shared by the whole process (the dashboard's next run);
- large splits in a file under `cache_dir()/features/`, written atomically, so another process reuses them.

The key names everything the features depend on: the data source (for folders, a fingerprint of the
split's files: paths, labels, sizes, modification times), the split, limit and seed, the image size, and
the backbone's handle (for a local SavedModel, also a fingerprint of its files). A changed file, a
re-generated SavedModel or a different image size therefore never reuses stale features.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
import weakref
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.settings.config import EXTRACT_BATCH_SIZE, DataConfig
from core.settings.errors import DataError, StopRequested

logger = logging.getLogger(__name__)

# Bumped whenever decoding or preprocessing changes what the backbone sees, so old files are not reused.
FORMAT_VERSION = 1
# Splits with fewer images take a few seconds to recompute; more than that is worth a file.
DISK_MIN_IMAGES = 1000
# Small splits kept in memory across runs in one process; 1280 float32 features are 5 KB an image.
MEMORY_BUDGET_BYTES = 256 * 1024**2
# Files beyond this total are removed, least recently used first (cats_vs_dogs at 224 needs ~120 MB).
DISK_BUDGET_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class FeatureKey:
    digest: str  # sha256 of parts, names the file
    parts: dict  # what the features depend on, stored beside them to check on reuse


@dataclass(frozen=True)
class SplitFeatures:
    features: np.ndarray  # float32 (n, dim), read-only: shared with later runs
    labels: np.ndarray  # int64 (n,)
    origin: str  # "computed", "memory" or "disk"
    seconds: float  # time to compute or load


def _file_fingerprint(items) -> str:
    """sha256 over (path, label, size, mtime) of each file, in order."""
    digest = hashlib.sha256()
    for path, label in items:
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        digest.update(f"{path}\0{label}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def _saved_model_fingerprint(folder: Path) -> str:
    """A re-saved SavedModel at the same path gets new mtimes, so its features are not confused."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _file_fingerprint((p, 0) for p in files)


def source_parts(source, split: str) -> dict | None:
    """What identifies one split of a source's images, or None for sources that cannot be keyed."""
    from core.data.sources import FolderSource, TfdsSource

    if isinstance(source, FolderSource):
        return {"source": source.info.source, "class_names": source.class_names,
                "files": _file_fingerprint(source.files[split]), "count": len(source.files[split])}
    if isinstance(source, TfdsSource):
        return {"source": source.info.source, "data_dir": str(source.data_dir),
                "version": str(source.builder.info.version), "class_names": source.class_names,
                "split_spec": source.split_specs[split], "split_limit": source.limits[split]}
    return None


def feature_key(source, split: str, data: DataConfig, handle: str) -> FeatureKey | None:
    """The key of one split's features with one backbone, or None if this source cannot be keyed."""
    from core.models.hub import is_local, normalise_handle

    described = source_parts(source, split)
    if described is None:
        return None
    handle = normalise_handle(handle)
    parts = {
        "format": FORMAT_VERSION, **described, "split": split, "limit": data.limit, "seed": data.seed,
        "val_fraction": data.val_fraction, "image_size": data.image_size, "handle": handle,
    }
    if is_local(handle):
        parts["handle_files"] = _saved_model_fingerprint(Path(handle))
    text = json.dumps(parts, sort_keys=True)
    return FeatureKey(hashlib.sha256(text.encode()).hexdigest()[:32], parts)


def _read_only(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features.flags.writeable = False
    labels.flags.writeable = False
    return features, labels


class FeatureStore:
    """Small splits in a bounded in-process LRU, large ones in atomically written .npz files.

    Thread-safe: dashboard sessions training at once may share it; concurrent writers of one key each
    write their own temporary file and the last rename wins with identical content.
    """

    def __init__(self, folder: Path, disk_min_images: int = DISK_MIN_IMAGES,
                 memory_budget_bytes: int = MEMORY_BUDGET_BYTES, disk_budget_bytes: int = DISK_BUDGET_BYTES):
        self.folder = Path(folder)
        self.disk_min_images = disk_min_images
        self.memory_budget_bytes = memory_budget_bytes
        self.disk_budget_bytes = disk_budget_bytes
        self._memory: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, key: FeatureKey) -> Path:
        return self.folder / f"{key.digest}.npz"

    def get(self, key: FeatureKey) -> tuple[tuple[np.ndarray, np.ndarray], str] | None:
        """((features, labels), "memory" | "disk"), or None if not stored (or the file is unusable)."""
        with self._lock:
            if key.digest in self._memory:
                self._memory.move_to_end(key.digest)
                return self._memory[key.digest], "memory"
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                parts = json.loads(str(stored["parts"]))
                features = stored["features"].astype(np.float32, copy=False)
                labels = stored["labels"].astype(np.int64, copy=False)
            if parts != json.loads(json.dumps(key.parts)) or features.ndim != 2 or len(features) != len(labels):
                raise ValueError("stored key or shapes do not match")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            # A damaged or foreign file must never stop training: it is recomputed and replaced.
            logger.warning("Ignoring unusable feature file %s (%s: %s)", path, exc.__class__.__name__, exc)
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # least recently used files are pruned first
        except OSError:
            pass
        return _read_only(features, labels), "disk"

    def put(self, key: FeatureKey, features: np.ndarray, labels: np.ndarray) -> str:
        """Keep the arrays where their size says; returns "memory" or "disk"."""
        features, labels = _read_only(features, labels)
        if len(labels) >= self.disk_min_images or features.nbytes + labels.nbytes > self.memory_budget_bytes:
            self._write(key, features, labels)
            return "disk"
        with self._lock:
            self._memory[key.digest] = (features, labels)
            self._memory.move_to_end(key.digest)
            total = sum(f.nbytes + y.nbytes for f, y in self._memory.values())
            while total > self.memory_budget_bytes:
                _, (f, y) = self._memory.popitem(last=False)
                total -= f.nbytes + y.nbytes
        return "memory"

    def _write(self, key: FeatureKey, features: np.ndarray, labels: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        tmp = self.folder / f".{key.digest}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, features=features, labels=labels, parts=np.array(json.dumps(key.parts)))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            # A full or read-only cache folder costs the next run a recomputation, not this run.
            logger.warning("Could not store features in %s (%s)", final, exc)
            tmp.unlink(missing_ok=True)
            return
        self._prune(keep=final)

    def _prune(self, keep: Path) -> None:
        files = []
        for p in self.folder.glob("*.npz"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total <= self.disk_budget_bytes:
                break
            if p != keep:
                p.unlink(missing_ok=True)
                total -= size

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()


_stores: dict[Path, FeatureStore] = {}
_stores_lock = threading.Lock()


def default_store() -> FeatureStore:
    """The process-wide store for the current cache folder ($LAB_CACHE_DIR may change, e.g. in tests)."""
    from core.settings.paths import cache_dir

    folder = cache_dir() / "features"
    with _stores_lock:
        if folder not in _stores:
            _stores[folder] = FeatureStore(folder)
        return _stores[folder]


_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_compiled_lock = threading.Lock()


def _compiled_call(backbone, image_size: int):
    """The backbone's forward pass as one compiled function, shared by every split it extracts.

    One trace serves every batch size, the short last batch included; its first call costs more than a
    second of tracing and graph optimisation on 2 cores (measured), which the validation split then skips.
    """
    import tensorflow as tf

    with _compiled_lock:
        by_size = _compiled.setdefault(backbone, {})
        if image_size not in by_size:
            layer = weakref.ref(backbone)  # a strong reference here would keep the backbone alive for good
            by_size[image_size] = tf.function(
                lambda x: layer()(x, training=False), autograph=False,
                input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
        return by_size[image_size]


def extract_features(backbone, dataset, image_size: int, expected: int | None = None,
                     on_step: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run a frozen backbone once over a batched (images, labels) dataset; returns numpy arrays.

    With `expected` (the split's size) the output is filled in place instead of concatenated at the end,
    so a large split never needs two copies of its features at once.
    """
    import tensorflow as tf

    call = _compiled_call(backbone, image_size)
    features = labels = None
    count = 0
    batches = ((call(x), y) for x, y in dataset)
    if tf.distribute.has_strategy():
        # A backbone made under MirroredStrategy or TPUStrategy only runs inside the replicas.
        from core.models.distribute import replica_batches

        batches = replica_batches(tf.distribute.get_strategy(), lambda x: backbone(x, training=False), dataset)
    for step, (out, y) in enumerate(batches, start=1):
        out = out.numpy()
        n = len(out)
        if features is None:
            capacity = max(expected or 0, n)
            features, labels = np.empty((capacity, out.shape[1]), np.float32), np.empty(capacity, np.int64)
        if count + n > len(features):  # more images than expected: grow instead of failing
            capacity = max(2 * len(features), count + n)
            features = np.concatenate([features, np.empty((capacity - len(features), features.shape[1]),
                                                          np.float32)])
            labels = np.concatenate([labels, np.empty(capacity - len(labels), np.int64)])
        features[count:count + n] = out
        labels[count:count + n] = y.numpy()
        count += n
        if on_step:
            on_step(step)
    if features is None:
        return np.empty((0, 0), np.float32), np.empty(0, np.int64)
    return features[:count], labels[:count]


def split_features(backbone, source, split: str, data: DataConfig, handle: str,
                   store: FeatureStore | None = None,
                   on_status: Callable[[str], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> SplitFeatures:
    """One split's backbone features: reused from the store when present, else computed and stored.

    Raises StopRequested (nothing stored) if should_stop returns True between batches.
    """
    import tensorflow as tf

    from core.data.sources import make_pipeline, steps_per_epoch
    from core.models.cluster import on_every_worker

    start = time.perf_counter()
    store = store or default_store()
    status = on_status or (lambda _msg: None)
    key = feature_key(source, split, data, handle)
    found = store.get(key) if key else None
    if tf.distribute.has_strategy() and 0 in on_every_worker(tf.distribute.get_strategy(), int(found is not None)):
        found = None  # another worker has to compute them, and computing is a collective step for all
    if found is not None:
        (features, labels), origin = found
        missing = source.info.split_size(split) - len(labels)
        if missing > 0 and hasattr(source, "note_skipped"):
            source.note_skipped(missing)  # counted when the features were computed; count them again
        status(f"Reusing stored backbone features for the {split} split ({len(labels)} images, from {origin}).")
        return SplitFeatures(features, labels, origin, time.perf_counter() - start)

    batched = dataclasses.replace(data, batch_size=EXTRACT_BATCH_SIZE)
    n_images = source.info.split_size(split)
    n_steps = steps_per_epoch(source, split, batched.batch_size)
    status(f"Computing backbone features once for the {split} split ({n_images} images) ...")

    def tick(step: int) -> None:
        if on_status and (step == n_steps or step % 10 == 0):
            done = min(n_images, step * batched.batch_size)
            on_status(f"Features for the {split} split: {done}/{n_images} images")
        if should_stop and should_stop():
            raise StopRequested()

    # No image cache: every image is read exactly once here, so holding decoded images would only cost memory.
    dataset = make_pipeline(source, split, batched, training=False, cache_budget_bytes=0)
    features, labels = extract_features(backbone, dataset, data.image_size, expected=n_images, on_step=tick)
    if len(labels) == 0:
        raise DataError(f"No image of the {split} split could be decoded; check the dataset's files.")
    if key is not None:
        store.put(key, features, labels)
    return SplitFeatures(features, labels, "computed", time.perf_counter() - start)


def feature_batches(features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int | None = None):
    """A Keras Sequence of (features, labels) batches, reshuffled every epoch when seed is given.

    Fitting on the arrays directly makes Keras copy them into tensors and a dataset: 190 MB more peak
    memory for cats_vs_dogs' 23,262 feature vectors (measured), against 30 MB for slicing batches here.
    """
    import tf_keras

    class FeatureBatches(tf_keras.utils.Sequence):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self._order()

        def _order(self) -> np.ndarray:
            return self.rng.permutation(len(labels)) if seed is not None else np.arange(len(labels))

        def __len__(self) -> int:
            return math.ceil(len(labels) / batch_size)

        def __getitem__(self, i: int):
            rows = self.order[i * batch_size:(i + 1) * batch_size]
            return features[rows], labels[rows]

        def on_epoch_end(self) -> None:
            self.order = self._order()

    return FeatureBatches()
