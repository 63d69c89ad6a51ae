"""A participant's own classes: names, limits, images through the upload checks, the zip, idle clean-up."""
from __future__ import annotations

import os
import threading
import time

import pytest
from sample_images import encode, noisy_jpeg, png_bomb, solid

from core.data import own_classes
from core.data.own_classes import (
    MAX_CLASSES,
    MAX_IMAGES_PER_CLASS,
    MAX_NAME_CHARS,
    ClassStore,
    belongs_to_other_session,
    clean_class_name,
    prune_idle,
    session_folder_name,
    store_for,
    validation_images,
)
from core.settings.config import DataConfig
from core.settings.errors import DataError, ImageError, LabError


def png(seed: int, size=(600, 400)) -> bytes:
    return encode(solid(((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256), size), "PNG")


@pytest.fixture
def store(tmp_path) -> ClassStore:
    return ClassStore(tmp_path / "session")


def test_add_rename_remove_classes_and_images(store):
    assert store.classes() == []
    store.add_class("  Mugs ")
    store.add_class("Pens")
    assert store.class_names() == ["Mugs", "Pens"]
    first = store.add_image("Mugs", png(1), "one.png")
    store.add_image("Mugs", noisy_jpeg(seed=2), "two.jpg")
    assert [c.count for c in store.classes()] == [2, 0]
    assert first.path.is_file() and first.thumbnail.is_file()
    assert first.path.read_bytes()[:3] == b"\xff\xd8\xff"  # re-encoded as JPEG, whatever came in
    store.rename_class("Mugs", "Cups")
    assert store.class_names() == ["Cups", "Pens"]
    assert store.classes()[0].images[0].image_id == first.image_id
    store.remove_image("Cups", first.image_id)
    assert store.classes()[0].count == 1 and not first.thumbnail.exists()
    store.rename_class("Cups", "cups")  # a change of case only is a rename, not a duplicate
    store.remove_class("cups")
    assert store.class_names() == ["Pens"]
    assert not any(store.thumbs_dir.iterdir())  # the removed class's thumbnails went with it


def test_images_are_shrunk_to_bound_disk_and_memory(store):
    from PIL import Image

    store.add_class("big")
    image = store.add_image("big", png(3, size=(3000, 2000)), "big.png")
    with Image.open(image.path) as stored, Image.open(image.thumbnail) as thumb:
        assert max(stored.size) == own_classes.IMAGE_SIDE and stored.size == (512, 341)
        assert max(thumb.size) == own_classes.THUMB_SIDE


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "<script>", "..", ".", ".hidden", "x" * (MAX_NAME_CHARS + 1),
                                  "", "   ", "bell\x07", "zero\u200bwidth", "nul\x00", "CON", "com1.txt", "ends with dot."])
def test_hostile_or_unusable_class_names_are_refused_with_one_line(store, name):
    with pytest.raises(DataError) as refused:
        store.add_class(name)
    assert "\n" not in str(refused.value)
    assert store.class_names() == []
    assert not any(p for p in store.folder.rglob("*") if p.is_dir() and p.parent == store.classes_dir)


def test_names_are_kept_as_typed_where_safe():
    assert clean_class_name("  café   au lait ") == "café au lait"
    assert clean_class_name("tab\tand\nline") == "tab and line"  # whitespace of any kind is a space
    assert clean_class_name("x" * MAX_NAME_CHARS) == "x" * MAX_NAME_CHARS
    assert clean_class_name("ÄÖ 1+1 = 2 (ok) & 'quoted'") == "ÄÖ 1+1 = 2 (ok) & 'quoted'"


def test_duplicates_ignoring_case_and_split_names_are_refused(store):
    store.add_class("Cats")
    with pytest.raises(DataError, match="already a class"):
        store.add_class("cATS")
    store.add_class("Dogs")
    with pytest.raises(DataError, match="already a class"):
        store.rename_class("Dogs", "cats")
    store.add_class("train")
    with pytest.raises(DataError, match="splits"):
        store.add_class("Val")


def test_class_count_limit(store):
    for i in range(MAX_CLASSES):
        store.add_class(f"class {i}")
    with pytest.raises(DataError, match=f"At most {MAX_CLASSES} classes"):
        store.add_class("one more")


def test_images_per_class_limit_says_the_limit(store, monkeypatch):
    monkeypatch.setattr(own_classes, "MAX_IMAGES_PER_CLASS", 3)
    store.add_class("a")
    for i in range(3):
        store.add_image("a", png(i), f"{i}.png")
    with pytest.raises(DataError, match="has 3 images, the most a class may have; 9.png was not added"):
        store.add_image("a", png(9), "9.png")
    assert store.classes()[0].count == 3
    assert MAX_IMAGES_PER_CLASS == 30  # the stated limit itself


def test_bytes_per_session_limit(store, monkeypatch):
    store.add_class("a")
    store.add_image("a", noisy_jpeg(size=(400, 400), seed=1), "first.jpg")
    monkeypatch.setattr(own_classes, "MAX_SESSION_BYTES", store.total_bytes() + 100)
    with pytest.raises(DataError, match="limit; remove some images first"):
        store.add_image("a", noisy_jpeg(size=(400, 400), seed=2), "second.jpg")
    assert store.classes()[0].count == 1


def test_non_images_and_bombs_get_the_upload_checks(store):
    store.add_class("a")
    with pytest.raises(ImageError, match="notes.txt: not a readable image"):
        store.add_image("a", b"just some text, not a picture", "notes.txt")
    with pytest.raises(ImageError, match="megapixel limit"):
        store.add_image("a", png_bomb(), "bomb.png")
    with pytest.raises(LabError, match="no class called"):
        store.add_image("gone", png(1), "x.png")
    assert store.classes()[0].count == 0


def test_two_tabs_adding_at_once_keep_every_image_and_the_limit(store, monkeypatch):
    monkeypatch.setattr(own_classes, "MAX_IMAGES_PER_CLASS", 5)
    store.add_class("a")
    errors = []

    def add(seed):
        try:
            store.add_image("a", png(seed), f"{seed}.png")
        except DataError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.classes()[0].count == 5 and len(errors) == 3


def test_split_rule_agrees_with_folder_source(tmp_path):
    from core.data.sources import FolderSource

    for count in (2, 3, 10, 13):
        store = ClassStore(tmp_path / f"s{count}")
        for name in ("a", "b"):
            store.add_class(name)
            for i in range(count):
                store.add_image(name, png(i, size=(40, 40)), f"{i}.png")
        source = FolderSource(store.frozen_set(), DataConfig())
        assert source.info.counts["validation"]["a"] == validation_images(count), count
    assert validation_images(10) == 2  # what the page says: at least 10 each, 2 of them go to validation


def test_zip_round_trip_opens_with_the_labs_import(store, tmp_path):
    from core.data.sources import FolderSource
    from core.safety.zips import extract_zip

    for name, count in (("Red mug", 4), ("café", 3)):
        store.add_class(name)
        for i in range(count):
            store.add_image(name, png(i + len(name)), f"{i}.png")
    result = extract_zip(store.zip_bytes(), tmp_path / "unpacked")
    source = FolderSource(result.root, DataConfig())
    assert source.class_names == ["Red mug", "café"]
    totals = {n: source.info.counts["train"][n] + source.info.counts["validation"][n] for n in source.class_names}
    assert totals == {"Red mug": 4, "café": 3}


def test_frozen_set_stays_as_it_was_and_is_refused_until_trainable(store):
    store.add_class("a")
    with pytest.raises(DataError, match="at least 2 classes"):
        store.frozen_set()
    store.add_class("b")
    for name in ("a", "b"):
        store.add_image(name, png(1), "1.png")
    with pytest.raises(DataError, match="at least 2 images"):
        store.frozen_set()
    for name in ("a", "b"):
        store.add_image(name, png(2), "2.png")
    frozen = store.frozen_set()
    assert frozen == store.frozen_set()  # unchanged classes: the same set
    assert frozen.name == "own-classes"  # the dataset's name on every page, not a digest
    store.remove_image("a", store.classes()[0].images[0].image_id)
    store.add_image("a", png(3), "3.png")
    assert len(list((frozen / "a").iterdir())) == 2 and store.frozen_set() != frozen


def test_session_folders_are_hashed_and_owned(tmp_path):
    token = "0123456789abcdef0123456789abcdef"
    store = store_for(token, tmp_path)
    assert token not in str(store.folder) and store.folder.name == session_folder_name(token)
    source = f"folder:{store.folder / 'sets' / 'abc'}"
    assert not belongs_to_other_session(source, token, tmp_path)
    assert belongs_to_other_session(source, "f" * 32, tmp_path)
    assert not belongs_to_other_session("folder:/data/pets", "f" * 32, tmp_path)
    assert not belongs_to_other_session("tfds:cats_vs_dogs", "f" * 32, tmp_path)


def test_cloud_preset_accepts_own_classes_as_a_dataset(monkeypatch, tmp_path):
    from core.settings.presets import PRESETS, check_source

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    store = store_for("0123456789abcdef0123456789abcdef")
    for name in ("a", "b"):
        store.add_class(name)
        for i in range(2):
            store.add_image(name, png(i), f"{i}.png")
    check_source(f"folder:{store.frozen_set()}", PRESETS["cloud"])  # no error: inside the uploads folder
    with pytest.raises(LabError):
        check_source(f"folder:{tmp_path / 'elsewhere'}", PRESETS["cloud"])


def test_prune_idle_removes_only_folders_unused_for_a_day(tmp_path):
    now = time.time()
    old, fresh = ClassStore(tmp_path / "old"), ClassStore(tmp_path / "fresh")
    for store in (old, fresh):
        store.add_class("a")
    day = own_classes.IDLE_SECONDS
    os.utime(old.folder / own_classes.TOUCHED, (now - day - 60, now - day - 60))
    assert prune_idle(tmp_path, now) == [old.folder]
    assert not old.folder.exists() and fresh.folder.is_dir()
    assert prune_idle(tmp_path / "missing", now) == []


def test_prune_if_due_looks_at_most_once_per_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(own_classes, "_last_pruned", 0.0)
    calls = []
    monkeypatch.setattr(own_classes, "prune_idle", lambda root, now: calls.append(now) or [])
    own_classes.prune_if_due(tmp_path, now=10_000.0)
    own_classes.prune_if_due(tmp_path, now=10_000.0 + own_classes.PRUNE_EVERY_SECONDS - 1)
    own_classes.prune_if_due(tmp_path, now=10_000.0 + own_classes.PRUNE_EVERY_SECONDS + 1)
    assert len(calls) == 2


def test_training_settings_fit_small_classes_and_the_preset(monkeypatch):
    from core.settings.config import MOBILENET_V2_HANDLE, ModelKind

    monkeypatch.setenv("LAB_PRESET", "cloud")
    source = f"folder:{own_classes.own_root() / 'x' / 'sets' / 'y'}"
    pairs = own_classes.training_configs(source, MOBILENET_V2_HANDLE, own_classes.training_images([5, 5]), with_baseline=True)
    assert [t.model for _, t in pairs] == [ModelKind.TRANSFER, ModelKind.BASELINE]
    data, transfer = pairs[0]
    assert data.batch_size == 8 and data.image_size <= 224 and transfer.cache_features
    assert own_classes.training_configs(source, MOBILENET_V2_HANDLE, 100)[0][0].batch_size == 16  # the cloud cap
