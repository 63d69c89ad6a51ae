"""Unpacking an uploaded zip of class folders without trusting anything inside it.

A zip from a browser can name files `../../etc/x` or `/home/x` (zip-slip), hold symlinks, declare tiny
sizes for members that inflate to gigabytes, or not be a zip at all. Every member is checked before a
byte is written; sizes are counted while inflating rather than taken from the header; everything is
written into a hidden folder that is renamed into place only when complete. Non-image files are skipped
and counted, as dataset folders do.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from core.data.images import is_image_name
from core.settings.errors import DataError

logger = logging.getLogger(__name__)

MAX_FILES = 60_000  # cats_vs_dogs has 23,262 images; leave room without allowing millions of entries
MAX_TOTAL_BYTES = 1024**3  # uncompressed; uploads are capped at 200 MB and images hardly compress
CHUNK = 1024 * 1024
# Folders that archivers add and that are never classes.
IGNORED_DIRS = {"__MACOSX", ".DS_Store", "__pycache__"}


@dataclass
class ExtractResult:
    root: Path  # the dataset folder: the one holding the class sub-folders
    images: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files not extracted
    reused: bool = False  # the same zip was unpacked before

    @property
    def source(self) -> str:
        return f"folder:{self.root}"


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's path inside the archive, refused when it would land outside the target folder."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"The zip contains an absolute path ('{info.filename}'); refusing to extract it.")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise DataError(f"The zip contains a path that leaves its folder ('{info.filename}'); refusing to extract it.")
    return path


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _dataset_root(folder: Path) -> Path:
    """Descend through single wrapper folders (zip of 'pets/' holding 'cats/' and 'dogs/')."""
    while True:
        children = [c for c in folder.iterdir() if not c.name.startswith(".")]
        dirs = [c for c in children if c.is_dir()]
        if len(dirs) == 1 and not any(c.is_file() for c in children):
            folder = dirs[0]
        else:
            return folder


def _digest(stream: BinaryIO) -> str:
    h = hashlib.sha256()
    stream.seek(0)
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        h.update(chunk)
    stream.seek(0)
    return h.hexdigest()[:16]


def extract_zip(data: bytes | BinaryIO, dest_dir: str | Path, max_files: int = MAX_FILES,
                max_total_bytes: int = MAX_TOTAL_BYTES) -> ExtractResult:
    """Unpack the images of a zip into dest_dir/zip-<content hash>/ and return where the classes are.

    The same zip uploaded twice is unpacked once. Raises DataError for anything unsafe or unusable.
    """
    dest_dir = Path(dest_dir)
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    digest = _digest(stream)
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise DataError("The upload is not a zip file. Zip a folder that holds one sub-folder per class.") from None
    with archive:
        members = archive.infolist()
        files = [m for m in members if not m.is_dir()]
        if len(files) > max_files:
            raise DataError(f"The zip holds {len(files):,} files; the limit is {max_files:,}.")
        declared = sum(m.file_size for m in files)
        if declared > max_total_bytes:
            raise DataError(f"The zip would unpack to {declared / 1e9:.1f} GB; the limit is "
                            f"{max_total_bytes / 1e9:.1f} GB.")
        skipped: dict[str, int] = {}
        wanted: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for member in members:
            path = _member_path(member)
            if _is_symlink(member):
                raise DataError(f"The zip contains a symbolic link ('{member.filename}'); refusing to extract it.")
            if member.is_dir():
                continue
            if member.flag_bits & 0x1:
                raise DataError("The zip is password-protected; upload an unencrypted zip.")
            if any(part in IGNORED_DIRS or part.startswith(".") for part in path.parts):
                skipped["archiver metadata"] = skipped.get("archiver metadata", 0) + 1
                continue
            if not is_image_name(path.name):
                skipped["not an image file"] = skipped.get("not an image file", 0) + 1
                continue
            wanted.append((member, path))
        if not wanted:
            raise DataError("The zip holds no images (jpg, jpeg, png, bmp, gif, webp). Zip a folder that "
                            "holds one sub-folder of images per class.")
        final = dest_dir / f"zip-{digest}"
        if final.is_dir():
            images = sum(1 for p in final.rglob("*") if p.is_file())
            return ExtractResult(_dataset_root(final), images, skipped, reused=True)
        dest_dir.mkdir(parents=True, exist_ok=True)
        partial = dest_dir / f".partial-{final.name}-{os.getpid()}-{id(stream)}"
        try:
            extract_members(archive, wanted, partial, max_total_bytes)
            if final.exists():  # another session unpacked the same zip meanwhile
                shutil.rmtree(partial)
            else:
                os.replace(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return ExtractResult(_dataset_root(final), len(wanted), skipped)


def extract_members(archive: zipfile.ZipFile, members, target: Path, max_total_bytes: int,
                    error: type[Exception] = DataError, outcome: str = "nothing was kept") -> None:
    """Write already-vetted (ZipInfo, relative path) members under target, counting the bytes really
    unpacked: a zip's headers can understate sizes, so the limit is enforced while writing."""
    written = 0
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    for member, path in members:
        out = target.joinpath(*path.parts)
        # Belt and braces: the caller's path checks make this unreachable, but the resolved path decides.
        if not out.resolve().is_relative_to(root):
            raise error(f"'{member.filename}' would be written outside its folder; {outcome}.")
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(member) as src, open(out, "wb") as dst:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    written += len(chunk)
                    if written > max_total_bytes:
                        raise error(f"The zip unpacks to more than {max_total_bytes / 1e6:,.0f} MB "
                                    f"(its headers understate the sizes); {outcome}.")
                    dst.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise error(f"'{member.filename}' in the zip is damaged, encrypted or uses an unsupported "
                        f"compression ({exc.__class__.__name__}); {outcome}.") from None
        except OSError as exc:  # a name this file system refuses, or a full disk
            raise error(f"'{member.filename}' could not be written ({exc.strerror}); {outcome}.") from None

