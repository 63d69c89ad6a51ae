"""Cached backbone features: the same model as the article's uncached fit, reused only when nothing changed.

Also the other fast paths of the speed work: the ordered input pipeline and one-image prediction.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.data.sources import TRAIN, VALIDATION, make_pipeline, open_source
from core.settings.config import DataConfig, ModelKind, TrainConfig
from core.settings.errors import StopRequested
from core.training.features import FeatureStore, default_store, extract_features, feature_key, split_features

SIZE = 64


def demo_data(folder: Path, **kw) -> DataConfig:
    return DataConfig(source=f"folder:{folder}", image_size=SIZE, batch_size=16, **kw)


def transfer(backbone: Path, **kw) -> TrainConfig:
    return TrainConfig(model=ModelKind.TRANSFER, epochs=8, learning_rate=1e-2, handle=str(backbone), **kw)


class CountingBackbone:
    """Wraps a hub layer and counts the images pushed through it."""

    def __init__(self, handle: Path):
        import tensorflow_hub as hub

        self.layer = hub.KerasLayer(str(handle))
        self.images = 0

    def __call__(self, x, training=False):
        import tensorflow as tf

        tf.py_function(lambda n: self._count(int(n)), [tf.shape(x)[0]], [])
        return self.layer(x, training=training)

    def _count(self, n: int) -> None:
        self.images += n


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory, demo_folder, demo_backbone):
    """The same experiment trained the article's way, with cached features, and again reusing them."""
    from core.training.experiment import fit, save_run

    default_store().clear_memory()  # computed here, whatever ran before in this session
    runs = tmp_path_factory.mktemp("feature-runs")
    data = demo_data(demo_folder)
    out = {}
    for name, cache in (("uncached", False), ("cached", True), ("reused", True)):
        source = open_source(data)
        train = transfer(demo_backbone, cache_features=cache)
        result = fit(source, data, train)
        out[name] = (result, save_run(result, source, data, train, runs))
    return out


def validation_images(demo_folder) -> tuple[list[np.ndarray], np.ndarray]:
    from core.data.images import decode_image

    source = open_source(demo_data(demo_folder))
    paths = source.files[VALIDATION]
    return [decode_image(p.read_bytes(), p.name) for p, _ in paths], np.array([label for _, label in paths])


def test_cached_features_reach_the_uncached_validation_accuracy(both_paths):
    uncached, cached = both_paths["uncached"][0], both_paths["cached"][0]
    assert cached.extra["feature_origin"] == {TRAIN: "computed", VALIDATION: "computed"}
    assert cached.feature_seconds > 0 and uncached.feature_seconds == 0
    assert uncached.final["val_accuracy"] > 0.9  # both learn: the comparison below is not chance against chance
    assert abs(cached.final["val_accuracy"] - uncached.final["val_accuracy"]) <= 0.01
    assert len(cached.history) == len(uncached.history) == 8


def test_reused_features_give_the_identical_run(both_paths):
    cached, reused = both_paths["cached"][0], both_paths["reused"][0]
    assert reused.extra["feature_origin"] == {TRAIN: "memory", VALIDATION: "memory"}
    for a, b in zip(cached.history, reused.history):
        assert {k: a[k] for k in ("loss", "val_loss", "val_accuracy")} == pytest.approx(
            {k: b[k] for k in ("loss", "val_loss", "val_accuracy")}, rel=1e-5)


def test_cached_model_is_the_same_kind_of_model_and_reloads(both_paths, demo_folder):
    import tensorflow as tf

    from core.data.sources import preprocess
    from core.safety.model_files import load_model

    (cached, cached_dir), (_, uncached_dir) = both_paths["cached"], both_paths["uncached"]
    reloaded, info = load_model(cached_dir / "model.h5")
    reference, _ = load_model(uncached_dir / "model.h5")
    assert [type(layer).__name__ for layer in reloaded.layers] == ["KerasLayer", "Dense"]
    assert [type(layer).__name__ for layer in reference.layers] == ["KerasLayer", "Dense"]
    assert reloaded.count_params() == reference.count_params()
    assert info.class_names == ["circles", "squares"]

    images, labels = validation_images(demo_folder)
    batch = tf.stack([preprocess(img, SIZE) for img in images])
    np.testing.assert_allclose(reloaded(batch).numpy(), cached.model(batch).numpy(), rtol=1e-5, atol=1e-6)
    cached_labels = reloaded(batch).numpy().argmax(1)
    uncached_labels = reference(batch).numpy().argmax(1)
    assert np.mean(cached_labels == uncached_labels) >= 0.95
    assert np.mean(cached_labels == labels) >= 0.9


def test_cached_model_predicts_uploads_like_the_uncached_one(both_paths, demo_folder):
    from core.runs.predict import Prediction, load_for_prediction, predict_bytes

    files = [(p.name, p.read_bytes()) for p in sorted((demo_folder / "circles").glob("*.jpg"))[:3]]
    files += [(p.name, p.read_bytes()) for p in sorted((demo_folder / "squares").glob("*.jpg"))[:3]]
    labels = {}
    for name in ("cached", "uncached"):
        results = predict_bytes(load_for_prediction(both_paths[name][1]), files)
        assert all(isinstance(r, Prediction) for r in results)
        labels[name] = [r.label for r in results]
    assert labels["cached"] == labels["uncached"] == ["circles"] * 3 + ["squares"] * 3


def test_one_image_fast_path_matches_the_batched_path(both_paths, demo_folder):
    import tensorflow as tf

    from core.data.sources import preprocess
    from core.runs.predict import load_for_prediction

    loaded = load_for_prediction(both_paths["cached"][1])
    images, _ = validation_images(demo_folder)
    one = loaded.probabilities(images[:1])
    batched = loaded.probabilities(images[:2])
    direct = tf.nn.softmax(loaded.model(tf.stack([preprocess(images[0], SIZE)]))).numpy()
    assert one.shape == (1, 2)
    np.testing.assert_allclose(one[0], batched[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one, direct, rtol=1e-5, atol=1e-6)


# --- the key: what the stored features depend on ---

def test_key_names_everything_the_features_depend_on(demo_folder, demo_backbone, tmp_path):
    from core.data.demo import make_demo_backbone

    data = demo_data(demo_folder)
    source = open_source(data)
    base = feature_key(source, TRAIN, data, str(demo_backbone))
    assert base == feature_key(open_source(data), TRAIN, data, str(demo_backbone))
    assert base == feature_key(source, TRAIN, dataclasses.replace(data, batch_size=4), str(demo_backbone))
    assert base.parts["handle"] == str(demo_backbone.resolve())

    other_backbone = make_demo_backbone(tmp_path / "other", seed=1)
    variants = [
        feature_key(source, VALIDATION, data, str(demo_backbone)),
        feature_key(source, TRAIN, data, str(other_backbone)),
    ]
    for change in ({"image_size": 48}, {"limit": 40}, {"seed": 7}):
        changed = dataclasses.replace(data, **change)
        variants.append(feature_key(open_source(changed), TRAIN, changed, str(demo_backbone)))
    digests = [base.digest] + [k.digest for k in variants]
    assert len(set(digests)) == len(digests)


def test_key_follows_the_files_of_a_folder_and_a_resaved_backbone(demo_folder, tmp_path):
    from core.data.demo import make_demo_backbone

    folder = shutil.copytree(demo_folder, tmp_path / "shapes")
    backbone = make_demo_backbone(tmp_path / "backbone")
    data = demo_data(folder)
    before = feature_key(open_source(data), TRAIN, data, str(backbone)).digest

    first = open_source(data).files[TRAIN][0][0]
    stamp = first.stat().st_mtime + 5
    os.utime(first, (stamp, stamp))
    touched = feature_key(open_source(data), TRAIN, data, str(backbone)).digest
    assert touched != before

    for p in backbone.rglob("*"):
        if p.is_file():
            os.utime(p, (stamp, stamp))
    assert feature_key(open_source(data), TRAIN, data, str(backbone)).digest != touched


def test_tfds_splits_are_keyed_by_spec_and_limit_and_reused(monkeypatch, tmp_path, demo_backbone):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    store = FeatureStore(tmp_path / "features", disk_min_images=1)
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=20):
        data = DataConfig(source="tfds:cats_vs_dogs", image_size=SIZE, batch_size=8)
        source = open_source(data)
        keys = {split: feature_key(source, split, data, str(demo_backbone)) for split in (TRAIN, VALIDATION)}
        assert keys[TRAIN].parts["split_spec"] == "train[:80%]"
        assert keys[VALIDATION].parts["split_spec"] == "train[80%:]"
        limited = dataclasses.replace(data, limit=4)
        digests = {keys[TRAIN].digest, keys[VALIDATION].digest,
                   feature_key(open_source(limited), TRAIN, limited, str(demo_backbone)).digest}
        assert len(digests) == 3

        backbone = CountingBackbone(demo_backbone)
        first = split_features(backbone, source, TRAIN, data, str(demo_backbone), store=store)
        seen = backbone.images
        again = split_features(backbone, open_source(data), TRAIN, data, str(demo_backbone), store=store)
    assert (first.origin, again.origin) == ("computed", "disk")
    assert seen == len(first.labels) > 0 and backbone.images == seen
    np.testing.assert_array_equal(again.features, first.features)


# --- the store: memory for small splits, atomic files for large ones ---

def test_large_split_is_written_once_and_reused_from_disk(demo_folder, demo_backbone, tmp_path):
    store = FeatureStore(tmp_path / "features", disk_min_images=10)
    data = demo_data(demo_folder)
    backbone = CountingBackbone(demo_backbone)
    first = split_features(backbone, open_source(data), TRAIN, data, str(demo_backbone), store=store)
    assert first.origin == "computed"
    assert backbone.images == open_source(data).info.split_size(TRAIN) == len(first.labels)
    files = list((tmp_path / "features").iterdir())
    assert [f.suffix for f in files] == [".npz"]  # no temporary file left behind

    messages = []
    again = split_features(backbone, open_source(data), TRAIN, data, str(demo_backbone),
                           store=FeatureStore(tmp_path / "features", disk_min_images=10), on_status=messages.append)
    assert again.origin == "disk"
    assert backbone.images == len(first.labels)  # nothing went through the backbone a second time
    assert any("Reusing" in m for m in messages)
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.labels, first.labels)
    assert not again.features.flags.writeable  # shared with later runs: nobody may change them


def test_default_store_lives_in_the_cache_folder():
    from core.settings.paths import cache_dir

    assert default_store().folder == cache_dir() / "features"
    assert default_store() is default_store()


def test_damaged_or_foreign_file_is_recomputed(demo_folder, demo_backbone, tmp_path):
    store = FeatureStore(tmp_path / "features", disk_min_images=10)
    data = demo_data(demo_folder)
    source = open_source(data)
    backbone = CountingBackbone(demo_backbone)
    first = split_features(backbone, source, TRAIN, data, str(demo_backbone), store=store)
    key = feature_key(source, TRAIN, data, str(demo_backbone))
    store.path(key).write_bytes(store.path(key).read_bytes()[:200])  # truncated
    again = split_features(backbone, source, TRAIN, data, str(demo_backbone), store=store)
    assert again.origin == "computed"
    np.testing.assert_allclose(again.features, first.features, rtol=1e-6)

    val_key = feature_key(source, VALIDATION, data, str(demo_backbone))
    shutil.copy(store.path(key), store.path(val_key))  # a file that answers to another key
    assert store.get(val_key) is None
    assert not store.path(val_key).exists()
    assert store.get(key) is not None


def test_stopping_during_extraction_stores_nothing(demo_folder, demo_backbone, tmp_path):
    store = FeatureStore(tmp_path / "features", disk_min_images=1)
    data = demo_data(demo_folder)
    source = open_source(data)
    with pytest.raises(StopRequested):
        split_features(CountingBackbone(demo_backbone), source, TRAIN, data, str(demo_backbone),
                       store=store, should_stop=lambda: True)
    assert store.get(feature_key(source, TRAIN, data, str(demo_backbone))) is None
    assert not (tmp_path / "features").exists()


def fake_key(name: str):
    from core.training.features import FeatureKey

    return FeatureKey(name, {"name": name})


def test_memory_store_keeps_the_most_recent_within_its_budget(tmp_path):
    per_set = 100 * 16 * 4 + 100 * 8
    store = FeatureStore(tmp_path, disk_min_images=10**6, memory_budget_bytes=2 * per_set)
    for name in ("a", "b", "c"):
        assert store.put(fake_key(name), np.ones((100, 16), np.float32), np.zeros(100, np.int64)) == "memory"
    assert store.get(fake_key("a")) is None
    assert store.get(fake_key("b"))[1] == store.get(fake_key("c"))[1] == "memory"
    assert not list(tmp_path.iterdir())  # small splits never touch the disk

    # A set larger than the whole memory budget goes to a file, and leaves the others in memory.
    assert store.put(fake_key("big"), np.ones((300, 16), np.float32), np.zeros(300, np.int64)) == "disk"
    assert store.get(fake_key("big"))[1] == "disk"
    assert store.get(fake_key("c"))[1] == "memory"


def test_disk_store_removes_least_recently_used_files_beyond_its_budget(tmp_path):
    store = FeatureStore(tmp_path, disk_min_images=1, disk_budget_bytes=60_000)
    for i, name in enumerate(("old", "mid", "new")):
        store.put(fake_key(name), np.full((500, 10), i, np.float32), np.zeros(500, np.int64))
        stamp = 1_000_000 + i * 100
        os.utime(store.path(fake_key(name)), (stamp, stamp))
    store.put(fake_key("newest"), np.ones((500, 10), np.float32), np.zeros(500, np.int64))
    assert not store.path(fake_key("old")).exists()
    assert not store.path(fake_key("mid")).exists()
    assert store.path(fake_key("new")).exists() and store.path(fake_key("newest")).exists()
    (features, _), origin = store.get(fake_key("newest"))
    assert origin == "disk" and features.shape == (500, 10)


def test_extraction_fills_exactly_the_images_that_arrive():
    import tensorflow as tf

    def backbone(x, training=False):
        return tf.reduce_mean(x, axis=[1, 2])

    images = np.random.default_rng(0).random((10, 8, 8, 3)).astype(np.float32)
    labels = np.arange(10)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
    for expected in (None, 4, 10, 25):  # unknown, too few (grows), exact, more than arrive (skipped images)
        feats, ys = extract_features(backbone, ds, 8, expected=expected)
        np.testing.assert_allclose(feats, images.mean(axis=(1, 2)), rtol=1e-6)
        np.testing.assert_array_equal(ys, labels)


def test_images_skipped_as_corrupt_are_counted_again_when_features_are_reused(demo_folder, demo_backbone,
                                                                              tmp_path):
    folder = shutil.copytree(demo_folder, tmp_path / "shapes")
    good = next((folder / "circles").glob("*.jpg")).read_bytes()
    (folder / "circles" / "broken.jpg").write_bytes(good[: len(good) // 2])  # header fine, pixels cut off
    data = demo_data(folder)
    store = FeatureStore(tmp_path / "features", disk_min_images=1)
    counts = []
    for _ in range(2):
        source = open_source(data)
        origins = [split_features(CountingBackbone(demo_backbone), source, split, data, str(demo_backbone),
                                  store=store).origin for split in (TRAIN, VALIDATION)]
        counts.append((source.runtime_skipped, origins))
    assert counts == [(1, ["computed", "computed"]), (1, ["disk", "disk"])]


def test_feature_batches_visit_every_row_once_per_epoch_in_a_seeded_order():
    from core.training.features import feature_batches

    features = np.arange(50, dtype=np.float32).reshape(25, 2)
    labels = np.arange(25)

    def epochs(seed, n=3):
        batches = feature_batches(features, labels, 4, seed=seed)
        out = []
        for _ in range(n):
            rows = [batches[i] for i in range(len(batches))]
            assert [len(y) for _, y in rows] == [4] * 6 + [1]
            for x, y in rows:
                np.testing.assert_array_equal(x, features[y])  # features stay with their labels
            out.append(np.concatenate([y for _, y in rows]).tolist())
            batches.on_epoch_end()
        return out

    shuffled = epochs(seed=5)
    assert all(sorted(order) == list(range(25)) for order in shuffled)
    assert shuffled[0] != shuffled[1] and shuffled[0] != list(range(25))
    assert epochs(seed=5) == shuffled
    assert epochs(seed=None) == [list(range(25))] * 3  # validation: fixed order


# --- the input pipeline ---

def test_training_order_is_fixed_by_the_seed(demo_folder):
    def first_epoch_labels(seed: int) -> list[int]:
        data = demo_data(demo_folder, seed=seed)
        ds = make_pipeline(open_source(data), TRAIN, data, training=True)
        return [int(y) for _, batch in ds for y in batch.numpy()]

    assert first_epoch_labels(3) == first_epoch_labels(3)
    assert first_epoch_labels(3) != first_epoch_labels(4)
