"""Unpacking uploaded zips: images in, everything unsafe refused before a byte is written."""
from __future__ import annotations

import io
import stat
import struct
import zipfile

import pytest
from PIL import Image

from core.safety.zips import extract_zip
from core.settings.errors import DataError


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


@pytest.mark.parametrize("name, message", [
    ("../evil.png", "leaves its folder"),
    ("cats/../../evil.png", "leaves its folder"),
    ("/etc/evil.png", "absolute path"),
    ("C:/Windows/evil.png", "absolute path"),
    ("..\\evil.png", "leaves its folder"),
])
def test_paths_that_escape_are_refused_and_nothing_is_written(tmp_path, name, message):
    target = tmp_path / "uploads"
    with pytest.raises(DataError, match=message):
        extract_zip(make_zip(class_zip() | {name: png()}), target)
    assert not target.exists() or not any(target.iterdir())
    assert not (tmp_path / "evil.png").exists()


def test_symlinks_are_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in class_zip().items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("cats/link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        extract_zip(buffer.getvalue(), tmp_path)


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
