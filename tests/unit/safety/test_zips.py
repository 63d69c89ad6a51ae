"""Zips from a browser: the one vetting (core.safety.zips) that dataset zips and run imports share, and
unpacking uploaded datasets: images in, everything unsafe refused before a byte is written."""
from __future__ import annotations

import io
import stat
import struct
import zipfile

import pytest
from PIL import Image

from core.runs.archives import RUN_ZIP
from core.safety.zips import DATASET_ZIP, extract_zip, vetted_files
from core.settings.errors import DataError

# Both kinds of zip, each with the error it raises and the word its refusals use.
BOTH = pytest.mark.parametrize("rules", [DATASET_ZIP, RUN_ZIP], ids=["dataset", "run"])


def png(colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(out, "PNG")
    return out.getvalue()


def make_zip(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def with_member(entries: dict[str, bytes], info: zipfile.ZipInfo, data: bytes) -> bytes:
    """A zip of entries plus one member written from a hand-made ZipInfo (a symlink, an encrypted file)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
        archive.writestr(info, data)
    return buffer.getvalue()


def encrypted(data: bytes, name: str) -> bytes:
    """data with member `name` marked encrypted in the central directory (zipfile cannot write one)."""
    data = bytearray(data)
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(name.encode()))
    struct.pack_into("<H", data, at + 8, struct.unpack_from("<H", data, at + 8)[0] | 0x1)
    return bytes(data)


def symlink(name: str) -> zipfile.ZipInfo:
    link = zipfile.ZipInfo(name)
    link.create_system = 3  # unix, where the mode bits below mark a symbolic link
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return link


def vet(data: bytes, rules):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return vetted_files(archive, rules)


def class_zip(prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}cats/{i}.png": png((200, 30, 30)) for i in range(3)} | {
        f"{prefix}dogs/{i}.PNG": png((30, 30, 200)) for i in range(2)}


def test_images_are_unpacked_and_other_files_skipped_and_counted(tmp_path):
    entries = class_zip() | {"cats/notes.txt": b"hi", "__MACOSX/cats/._0.png": b"\0", "dogs/.DS_Store": b"\0"}
    result = extract_zip(make_zip(entries), tmp_path)
    assert result.images == 5 and not result.reused
    assert sorted(p.name for p in result.root.iterdir()) == ["cats", "dogs"]
    assert result.skipped == {"not an image file": 1, "archiver metadata": 2}
    assert result.source == f"folder:{result.root}"
    assert result.root.parent == tmp_path and result.root.name.startswith("zip-")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]


def test_a_wrapper_folder_is_looked_through_and_a_second_upload_reuses_the_first(tmp_path):
    data = make_zip(class_zip("holiday/pets/"))
    first = extract_zip(data, tmp_path)
    assert first.root.name == "pets"
    again = extract_zip(io.BytesIO(data), tmp_path)
    assert again.reused and again.root == first.root and again.images == 5


ESCAPING = [
    ("../evil.png", "leaves its folder"),
    ("cats/../../evil.png", "leaves its folder"),
    ("run/../../x.json", "leaves its folder"),
    ("..\\evil.png", "leaves its folder"),
    ("/etc/evil.png", "absolute path"),
    ("\\\\server\\share\\evil.png", "absolute path"),
    ("C:/Windows/evil.png", "absolute path"),
    ("c:evil.png", "absolute path"),
    # Not a drive letter, but no zip the Lab writes starts so: refused for both kinds, the stricter way.
    ("1:/evil.png", "absolute path"),
]


@BOTH
@pytest.mark.parametrize("name, message", ESCAPING)
def test_paths_that_escape_are_refused_with_each_kind_of_zip_wording(rules, name, message):
    with pytest.raises(rules.error, match=rf"^The zip contains .*{message} \('.*'\); refusing to {rules.action} it\.$"):
        vet(make_zip(class_zip() | {name: png()}), rules)


@pytest.mark.parametrize("name, message", ESCAPING)
def test_a_dataset_zip_with_an_escaping_path_writes_nothing(tmp_path, name, message):
    target = tmp_path / "uploads"
    with pytest.raises(DataError, match=message):
        extract_zip(make_zip(class_zip() | {name: png()}), target)
    assert not target.exists() or not any(target.iterdir())
    assert not (tmp_path / "evil.png").exists()


@BOTH
def test_symlinks_and_encrypted_members_are_refused(rules, tmp_path):
    with pytest.raises(rules.error, match=rf"symbolic link \('cats/link.png'\); refusing to {rules.action} it"):
        vet(with_member(class_zip(), symlink("cats/link.png"), b"/etc/passwd"), rules)
    with pytest.raises(rules.error, match="password-protected"):
        vet(encrypted(make_zip(class_zip()), "cats/1.png"), rules)
    if rules is DATASET_ZIP:
        with pytest.raises(DataError, match="symbolic link"):
            extract_zip(with_member(class_zip(), symlink("cats/link.png"), b"/etc/passwd"), tmp_path)
        assert not any(tmp_path.iterdir())


def test_too_many_files_or_too_many_bytes_are_refused(tmp_path):
    with pytest.raises(DataError, match="holds 5 files; the limit is 4"):
        extract_zip(make_zip(class_zip()), tmp_path, max_files=4)
    bomb = make_zip({"cats/0.png": png(), "dogs/big.bmp": b"\0" * 5_000_000})
    assert len(bomb) < 50_000
    with pytest.raises(DataError, match="would unpack to"):
        extract_zip(bomb, tmp_path, max_total_bytes=1_000_000)
    assert not any(tmp_path.iterdir())


def test_headers_that_understate_sizes_do_not_get_past_the_limit(tmp_path):
    """A member whose declared size is a lie is cut off while inflating, never written in full."""
    data = bytearray(make_zip({"cats/0.png": png(), "dogs/big.bmp": b"\0" * 3_000_000}))
    # Declare 100 bytes for the second member, in its local header and in the central directory.
    local = data.find(b"PK\x03\x04", data.find(b"PK\x03\x04") + 1)
    central = data.rfind(b"PK\x01\x02")
    assert data.find(b"dogs/big.bmp", local) == local + 30 and data.find(b"dogs/big.bmp", central) == central + 46
    struct.pack_into("<I", data, local + 22, 100)
    struct.pack_into("<I", data, central + 24, 100)
    with pytest.raises(DataError):
        extract_zip(bytes(data), tmp_path, max_total_bytes=1_000_000)
    assert not [p for p in tmp_path.rglob("*.bmp")]


def test_not_a_zip_and_a_zip_without_images_say_what_to_upload(tmp_path):
    with pytest.raises(DataError, match="not a zip file"):
        extract_zip(png(), tmp_path)
    with pytest.raises(DataError, match="no images"):
        extract_zip(make_zip({"readme.md": b"# hi", "data.csv": b"a,b"}), tmp_path)


# ---------------------------------------------------------------- more classes than a run may record


def test_a_zip_of_5000_classes_is_refused_before_anything_is_unpacked(tmp_path):
    """Thousands of classes would train, then give a run that the run list calls damaged."""
    data = make_zip({f"pets/c{i:04d}/0.png": b"" for i in range(5000)}, zipfile.ZIP_STORED)
    with pytest.raises(DataError, match=r"^This dataset has 5,000 classes; the Lab trains on at most 1,000\.$"):
        extract_zip(data, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("folders, classes", [
    (["cats", "dogs", "birds/a"], 3),
    (["holiday/pets/cats", "holiday/pets/dogs"], 2),  # wrapper folders are looked through
    (["train/cats", "train/dogs", "train/owls", "val/cats", "val/owls", "train"], 3),  # train/*.png: no class
    (["d/train/cats", "d/train/dogs", "d/validation/dogs", "d/validation/cats"], 2),
    (["train/cats", "train/dogs"], 2),  # a lone train/ is a wrapper folder, looked through
    (["", "cats", "dogs"], 2),  # images beside the class folders stop the descent
    (["train/cats", "train/dogs", "birds"], 2),  # train/ without val/ is a class folder
])
def test_classes_are_counted_as_the_folder_source_will_find_them(tmp_path, folders, classes):
    from core.data.sources import FolderSource
    from core.settings.config import DataConfig

    data = make_zip({f"{folder}/{i}.png".lstrip("/"): png() for folder in folders for i in range(2)})
    result = extract_zip(data, tmp_path)
    assert result.classes == classes
    if classes > 1:
        assert FolderSource(result.root, DataConfig(source=result.source)).info.num_classes == classes
    again = extract_zip(data, tmp_path)
    assert again.reused and again.classes == classes
