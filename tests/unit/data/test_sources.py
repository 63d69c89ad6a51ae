"""Dataset sources: TFDS through tfds.testing.mock_data, image folders with every layout and oddity."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.sources import TRAIN, VALIDATION, FolderSource, TfdsSource, make_pipeline, open_source
from core.settings.config import DataConfig
from core.settings.errors import DataError

SIZE = 32


def write_images(folder: Path, n: int, colour=(200, 30, 30), ext: str = "png", start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF", "webp": "WEBP"}[ext.lower()]
    for i in range(start, start + n):
        Image.new("RGB", (20, 16), colour).save(folder / f"img_{i:03d}.{ext}", fmt)


def folder_config(path: Path, **kw) -> DataConfig:
    return DataConfig(source=f"folder:{path}", image_size=SIZE, batch_size=kw.pop("batch_size", 8), **kw)


def all_examples(source, split: str, config: DataConfig):
    xs, ys = [], []
    for x, y in make_pipeline(source, split, config, training=split == TRAIN):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


# ---------------------------------------------------------------- TFDS, through the mock


@pytest.fixture
def mock_tfds(monkeypatch, tmp_path):
    """TFDS with generated examples; is_prepared forced on, as a downloaded dataset would report."""
    import tensorflow_datasets as tfds

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))  # per-test counts cache
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=20):
        yield


def test_tfds_source_gives_names_counts_and_article_batches(mock_tfds):
    config = DataConfig(source="tfds:cats_vs_dogs", image_size=SIZE, batch_size=8)
    source = open_source(config)
    assert isinstance(source, TfdsSource)
    assert source.info.class_names == ["cat", "dog"]
    assert source.split_specs == {TRAIN: "train[:80%]", VALIDATION: "train[80%:]"}  # the article's split
    # mock_data ignores slicing, so each split holds all 20 generated examples
    assert source.info.split_size(TRAIN) == 20 and source.info.split_size(VALIDATION) == 20
    batches = list(make_pipeline(source, TRAIN, config, training=True))
    assert [int(x.shape[0]) for x, _ in batches] == [8, 8, 4]
    for x, y in batches:
        assert x.shape[1:] == (SIZE, SIZE, 3) and x.dtype.name == "float32" and y.dtype.name == "int64"
        assert 0.0 <= float(x.numpy().min()) and float(x.numpy().max()) <= 1.0
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert Counter(labels.tolist()) == {0: source.info.counts[TRAIN]["cat"], 1: source.info.counts[TRAIN]["dog"]}


def test_tfds_and_folder_pipelines_shard_batches_not_files_between_workers(mock_tfds, tmp_path):
    """Several workers each keep their share of every batch (DATA); AUTO would split TFDS's record files
    between them, giving uneven steps and batches unlike one process's."""
    import tensorflow as tf

    write_images(tmp_path / "a", 4)
    write_images(tmp_path / "b", 4, colour=(30, 30, 200))
    for config in (DataConfig(source="tfds:cats_vs_dogs", image_size=SIZE, batch_size=8), folder_config(tmp_path)):
        for split, training in ((TRAIN, True), (VALIDATION, False)):
            pipeline = make_pipeline(open_source(config), split, config, training=training)
            assert pipeline.options().experimental_distribute.auto_shard_policy == \
                tf.data.experimental.AutoShardPolicy.DATA


def test_every_pipeline_runs_without_tf_data_autotuning(mock_tfds, tmp_path):
    """An autotuned pipeline's finished iterator can hold the process idle for seconds while it is deleted
    (TensorFlow 2.21; see without_autotune), so no pipeline the Lab iterates may inherit autotuning: the
    training and feature pipelines of both kinds of source, the reload check's images and evaluation's."""
    from core.runs.evaluate import _validation_batches

    write_images(tmp_path / "a", 4)
    write_images(tmp_path / "b", 4, colour=(30, 30, 200))
    for config in (DataConfig(source="tfds:cats_vs_dogs", image_size=SIZE, batch_size=8), folder_config(tmp_path)):
        source = open_source(config)
        pipelines = [make_pipeline(source, split, config, training=split == TRAIN) for split in (TRAIN, VALIDATION)]
        pipelines += [source.examples(VALIDATION, min_side=SIZE), _validation_batches(source, SIZE, 4)]
        for pipeline in pipelines:
            assert pipeline.options().autotune.enabled is False
        assert sum(len(y) for _, y in pipelines[0]) == source.info.split_size(TRAIN)  # and it still runs


def test_tfds_limit_is_balanced_and_cuts_validation_in_proportion(mock_tfds):
    config = DataConfig(source="tfds:cats_vs_dogs", image_size=SIZE, batch_size=4, limit=8)
    source = open_source(config)
    assert source.info.counts[TRAIN] == {"cat": 4, "dog": 4}
    assert source.info.split_size(VALIDATION) == 2  # 8 training images at 80/20 -> 2 validation
    _, labels = all_examples(source, TRAIN, config)
    assert sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    _, val_labels = all_examples(source, VALIDATION, config)
    assert len(val_labels) == 2


def test_tfds_grayscale_dataset_feeds_rgb_batches(mock_tfds):
    config = DataConfig(source="tfds:mnist", image_size=SIZE, batch_size=5)
    source = open_source(config)
    assert source.info.class_names == [str(i) for i in range(10)]
    x, _ = next(iter(make_pipeline(source, TRAIN, config, training=False)))
    assert x.shape == (5, SIZE, SIZE, 3)


def test_tfds_counts_cut_short_by_another_session_are_counted_again(mock_tfds, tmp_path):
    from core.settings.paths import tfds_dir

    config = DataConfig(source="tfds:cats_vs_dogs", image_size=SIZE, batch_size=8)
    counts = open_source(config).info.counts
    cache = tfds_dir() / "cats_vs_dogs.lab-counts.json"
    cache.write_text(cache.read_text()[:20])  # as read while another session was writing it
    assert open_source(config).info.counts == counts
    assert json.loads(cache.read_text())["counts"] == counts
    assert [p.name for p in cache.parent.iterdir() if p.name.startswith(".cats_vs_dogs")] == []


def test_tfds_unknown_name_is_a_data_error(mock_tfds):
    with pytest.raises(DataError, match="no dataset named 'no_such_dataset_xyz'"):
        open_source(DataConfig(source="tfds:no_such_dataset_xyz"))


@pytest.mark.parametrize("name", ["imdb_reviews", "wine_quality"])
def test_tfds_non_image_dataset_is_refused(mock_tfds, name):
    with pytest.raises(DataError, match="not an image-classification dataset"):
        open_source(DataConfig(source=f"tfds:{name}"))


@pytest.mark.parametrize("source,match", [("cats_vs_dogs", "should look like"), ("tfds:", "should look like"),
                                          ("s3:bucket", "Unknown data source type 's3'")])
def test_malformed_source_strings(source, match):
    with pytest.raises(DataError, match=match):
        open_source(DataConfig(source=source))


# ---------------------------------------------------------------- image folders


@pytest.fixture
def two_classes(tmp_path) -> Path:
    write_images(tmp_path / "ants", 50, (200, 30, 30))
    write_images(tmp_path / "bees", 25, (30, 30, 200))
    return tmp_path


def test_folder_stratified_80_20_split(two_classes):
    source = FolderSource(two_classes, folder_config(two_classes))
    assert source.info.class_names == ["ants", "bees"]
    assert source.info.counts == {TRAIN: {"ants": 40, "bees": 20}, VALIDATION: {"ants": 10, "bees": 5}}
    train = {p for p, _ in source.files[TRAIN]}
    val = {p for p, _ in source.files[VALIDATION]}
    assert not train & val and len(train | val) == 75


def test_folder_split_is_stable_for_a_seed_and_changes_with_it(two_classes):
    config = folder_config(two_classes)
    first = FolderSource(two_classes, config).files
    again = FolderSource(two_classes, config).files
    assert first == again
    other = FolderSource(two_classes, folder_config(two_classes, seed=7)).files
    assert {p for p, _ in other[VALIDATION]} != {p for p, _ in first[VALIDATION]}


def test_folder_limit_is_stratified_and_cuts_validation_80_20(two_classes):
    source = FolderSource(two_classes, folder_config(two_classes, limit=30))
    assert source.info.counts[TRAIN] == {"ants": 20, "bees": 10}  # same 2:1 mix as the folder
    val = source.info.counts[VALIDATION]
    assert sum(val.values()) == 8  # 30 training images at 80/20 -> 7.5 -> 8 validation
    assert val["ants"] > val["bees"] >= 1
    full = FolderSource(two_classes, folder_config(two_classes))
    assert {p for p, _ in source.files[VALIDATION]} <= {p for p, _ in full.files[VALIDATION]}


def test_folder_train_and_val_subfolders_are_the_splits(tmp_path):
    write_images(tmp_path / "train" / "cat", 6)
    write_images(tmp_path / "train" / "dog", 4, (0, 0, 255))
    write_images(tmp_path / "val" / "cat", 2)
    write_images(tmp_path / "val" / "dog", 3, (0, 0, 255))
    source = FolderSource(tmp_path, folder_config(tmp_path))
    assert source.info.class_names == ["cat", "dog"]
    assert source.info.counts == {TRAIN: {"cat": 6, "dog": 4}, VALIDATION: {"cat": 2, "dog": 3}}
    assert all("/val/" in str(p) for p, _ in source.files[VALIDATION])


def test_folder_validation_is_an_alias_for_val(tmp_path):
    for split, n in (("train", 5), ("validation", 2)):
        write_images(tmp_path / split / "a", n)
        write_images(tmp_path / split / "b", n, (0, 0, 255))
    source = FolderSource(tmp_path, folder_config(tmp_path))
    assert source.info.counts[VALIDATION] == {"a": 2, "b": 2}
    assert source.info.counts[TRAIN] == {"a": 5, "b": 5}


def test_folder_extensions_in_any_case(tmp_path):
    for i, ext in enumerate(("jpg", "JPG", "jpeg", "JPEG", "png", "PNG", "bmp", "BMP", "gif", "Gif", "webp", "WEBP")):
        write_images(tmp_path / "a", 1, ext=ext, start=i)
        write_images(tmp_path / "b", 1, (0, 0, 255), ext=ext, start=i)
    source = FolderSource(tmp_path, folder_config(tmp_path))
    assert sum(source.info.counts[TRAIN].values()) + sum(source.info.counts[VALIDATION].values()) == 24
    assert source.info.skipped == {}


def test_folder_skips_and_counts_non_images_and_corrupt_files(tmp_path):
    write_images(tmp_path / "a", 10)
    write_images(tmp_path / "b", 10, (0, 0, 255))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "labels.csv").write_text("x,y\n")
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    (tmp_path / "b" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden files are not the user's data
    source = FolderSource(tmp_path, folder_config(tmp_path))
    assert source.info.skipped == {"not an image file": 2, "unreadable image": 2}
    assert sorted(source.info.skipped_files) == ["a/labels.csv", "a/notes.txt", "b/broken.jpg", "b/empty.png"]
    assert source.info.split_size(TRAIN) + source.info.split_size(VALIDATION) == 20


def test_folder_image_corrupt_past_its_header_is_dropped_during_training(tmp_path):
    write_images(tmp_path / "a", 10, ext="jpg")
    write_images(tmp_path / "b", 10, (0, 0, 255), ext="jpg")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a" / "img_000.jpg", "JPEG", quality=90)
    good = (tmp_path / "a" / "img_000.jpg").read_bytes()
    (tmp_path / "a" / "img_000.jpg").write_bytes(good[: len(good) // 2])  # header fine, pixels cut off
    config = folder_config(tmp_path, val_fraction=0.1)
    source = FolderSource(tmp_path, config)
    expected = source.info.split_size(TRAIN) + source.info.split_size(VALIDATION) - 1
    assert source.info.skipped == {}  # its header reads fine, so the scan keeps it
    got = sum(len(all_examples(source, split, config)[1]) for split in (TRAIN, VALIDATION))
    assert got == expected
    assert source.runtime_skipped == 1


def test_folder_pipeline_batches_are_float32_in_unit_range(two_classes):
    config = folder_config(two_classes, batch_size=16)
    source = FolderSource(two_classes, config)
    x, y = all_examples(source, TRAIN, config)
    assert x.shape == (60, SIZE, SIZE, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert Counter(y.tolist()) == {0: 40, 1: 20}
    red = x[y == 0].mean(axis=(0, 1, 2))
    assert red[0] > 0.7 and red[2] < 0.2  # the ants' red survives decoding, resizing and scaling


def test_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="at least two class sub-folders"):
        FolderSource(tmp_path, folder_config(tmp_path))


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(folder_config(tmp_path / "nowhere"))


def test_one_class_only_is_a_data_error(tmp_path):
    write_images(tmp_path / "only", 10)
    with pytest.raises(DataError, match="found only 'only'"):
        FolderSource(tmp_path, folder_config(tmp_path))


def test_class_folder_without_images_is_left_out_with_a_note(tmp_path):
    write_images(tmp_path / "a", 10)
    write_images(tmp_path / "b", 10, (0, 0, 255))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("nothing here")
    source = FolderSource(tmp_path, folder_config(tmp_path))
    assert source.info.class_names == ["a", "b"]
    assert any("c" in note and "no readable images" in note for note in source.info.notes)


def test_class_with_fewer_images_than_the_batch(tmp_path):
    write_images(tmp_path / "many", 40)
    write_images(tmp_path / "few", 3, (0, 0, 255))
    config = folder_config(tmp_path, batch_size=32)
    source = FolderSource(tmp_path, config)
    assert source.info.counts[TRAIN]["few"] == 2 and source.info.counts[VALIDATION]["few"] == 1
    _, y = all_examples(source, TRAIN, config)
    assert Counter(y.tolist())[0] == 2  # classes are sorted: "few" is label 0


# ---------------------------------------------------------------- more classes than a run may record


def never_read(*_args, **_kwargs):
    raise AssertionError("an image header was read before the classes were counted")


def test_a_folder_of_5000_classes_is_refused_before_its_images_are_read(tmp_path, monkeypatch):
    for i in range(5000):
        (tmp_path / f"c{i:04d}").mkdir()
        (tmp_path / f"c{i:04d}" / "0.png").touch()  # counted by its name alone
    monkeypatch.setattr("core.data.sources.file_image_size", never_read)
    with pytest.raises(DataError, match=r"^This dataset has 5,000 classes; the Lab trains on at most 1,000\.$"):
        open_source(folder_config(tmp_path))


def test_classes_of_both_split_folders_count_together_and_empty_folders_do_not(tmp_path, monkeypatch):
    for split, names in (("train", range(600)), ("val", range(400, 1001))):
        for i in names:
            (tmp_path / split / f"c{i:04d}").mkdir(parents=True)
            (tmp_path / split / f"c{i:04d}" / "0.jpg").touch()
    for i in range(50):  # folders without images are no classes
        (tmp_path / "train" / f"empty{i}").mkdir()
        (tmp_path / "train" / f"empty{i}" / "notes.txt").touch()
    monkeypatch.setattr("core.data.sources.file_image_size", never_read)
    with pytest.raises(DataError, match=r"^This dataset has 1,001 classes; the Lab trains on at most 1,000\.$"):
        FolderSource(tmp_path, folder_config(tmp_path))


def test_a_dataset_at_the_limit_opens(tmp_path, monkeypatch):
    monkeypatch.setattr("core.data.sources.MAX_CLASSES", 3)
    for i, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        write_images(tmp_path / f"c{i}", 4, colour)
    assert FolderSource(tmp_path, folder_config(tmp_path)).info.num_classes == 3
    write_images(tmp_path / "c3", 4)
    with pytest.raises(DataError, match="has 4 classes; the Lab trains on at most 3"):
        FolderSource(tmp_path, folder_config(tmp_path))


def test_a_tfds_dataset_of_5089_classes_is_refused_before_it_is_downloaded(tmp_path, monkeypatch):
    import core.data.downloads

    monkeypatch.setattr(core.data.downloads, "preparation", never_read)
    with pytest.raises(DataError, match=r"^This dataset has 5,089 classes; the Lab trains on at most 1,000\.$"):
        TfdsSource("i_naturalist2017", DataConfig(source="tfds:i_naturalist2017"), data_dir=tmp_path)
