"""Unpacking a zip from a browser without trusting anything inside it: dataset zips and run folders alike.

`vetted_files` refuses zip-slip paths (`../x`, `/x`, `C:x`), symlinks, encryption and too many files or
declared bytes before a byte is written; `extract_members` counts the bytes again while inflating, since
headers can lie. A ZipRules says what one kind of zip may hold and how its refusals read.
"""
from __future__ import annotations

import dataclasses
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
from core.data.sources import check_class_count
from core.settings.errors import DataError, LabError
from core.settings.text import megabytes

logger = logging.getLogger(__name__)

MAX_FILES = 60_000  # cats_vs_dogs has 23,262 images; leave room without allowing millions of entries
MAX_TOTAL_BYTES = 1024**3  # uncompressed; uploads are capped at 200 MB and images hardly compress
CHUNK = 1024 * 1024
# What archivers and desktops add beside the zipped files (besides hidden names): never data.
ARCHIVER_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "__pycache__"})


@dataclass(frozen=True)
class ZipRules:
    """What one kind of zip may hold, and how its refusals read (each a LabError, shown as it is)."""
    max_files: int
    max_bytes: int  # uncompressed, declared in the headers and counted again while inflating
    error: type[LabError]
    action: str  # "refusing to <action> it"
    outcome: str  # what became of the work when inflating stopped midway
    not_a_zip: str
    encrypted: str
    too_many: str  # formatted with files= and limit=
    too_big: str  # formatted with declared_gb=, limit_gb= (numbers) and declared_mb=, limit_mb= (megabytes() texts)


DATASET_ZIP = ZipRules(
    MAX_FILES, MAX_TOTAL_BYTES, DataError, action="extract", outcome="nothing was kept",
    not_a_zip="The upload is not a zip file. Zip a folder that holds one sub-folder per class.",
    encrypted="The zip is password-protected; upload an unencrypted zip.",
    too_many="The zip holds {files:,} files; the limit is {limit:,}.",
    too_big="The zip would unpack to {declared_gb:.1f} GB; the limit is {limit_gb:.1f} GB.")


@dataclass
class ExtractResult:
    root: Path  # the dataset folder: the one holding the class sub-folders
    images: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files not extracted
    reused: bool = False  # the same zip was unpacked before
    classes: int = 0  # class folders, to tell the user what arrived without naming the server's folders

    @property
    def source(self) -> str:
        return f"folder:{self.root}"


def open_zip(data: bytes | bytearray | BinaryIO, rules: ZipRules) -> zipfile.ZipFile:
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        return zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise rules.error(rules.not_a_zip) from None


def member_path(info: zipfile.ZipInfo, rules: ZipRules) -> PurePosixPath:
    """The member's path inside the archive, refused when it would land outside the target folder."""
    name = info.filename.replace("\\", "/")
    # Windows puts "C:x" on drive C; any "X:" start is refused, a drive letter or not.
    if name.startswith("/") or name[1:2] == ":":
        raise rules.error(f"The zip contains an absolute path ('{info.filename}'); refusing to {rules.action} it.")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise rules.error(f"The zip contains a path that leaves its folder ('{info.filename}'); "
                          f"refusing to {rules.action} it.")
    return path


def is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def archiver_metadata(path: PurePosixPath) -> bool:
    return any(part in ARCHIVER_NAMES or part.startswith(".") for part in path.parts)


def vetted_files(archive: zipfile.ZipFile, rules: ZipRules) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every file member with its path inside the archive, once the whole zip passed: not too many files
    or declared bytes, and no member (folders included) absolute, leaving its folder, a symlink or encrypted.
    Raises rules.error for the first that fails; nothing has been written then."""
    members = archive.infolist()
    files = [m for m in members if not m.is_dir()]
    if len(files) > rules.max_files:
        raise rules.error(rules.too_many.format(files=len(files), limit=rules.max_files))
    declared = sum(m.file_size for m in files)
    if declared > rules.max_bytes:
        raise rules.error(rules.too_big.format(
            declared_gb=declared / 1e9, limit_gb=rules.max_bytes / 1e9, declared_mb=megabytes(declared),
            limit_mb=megabytes(rules.max_bytes)))
    vetted = []
    for member in members:
        path = member_path(member, rules)
        if is_symlink(member):
            raise rules.error(f"The zip contains a symbolic link ('{member.filename}'); refusing to {rules.action} it.")
        if member.flag_bits & 0x1:
            raise rules.error(rules.encrypted)
        if not member.is_dir():
            vetted.append((member, path))
    return vetted


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


def _class_count(paths: list[PurePosixPath]) -> int:
    """The class folders core.data.sources.FolderSource will find once these files are unpacked, counted
    from their paths alone: the wrapper folders _dataset_root looks through are dropped first, then
    train/ and val/ (or validation/) are looked into when both are there, as FolderSource does."""
    parts = [p.parts for p in paths]
    while parts and all(len(p) > 1 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    folders = {p[0] for p in parts if len(p) > 1}
    val = next((name for name in ("val", "validation") if name in folders), None)
    if "train" in folders and val:
        return len({p[1] for p in parts if p[0] in ("train", val) and len(p) > 2})
    return len(folders)


def extract_zip(data: bytes | BinaryIO, dest_dir: str | Path, max_files: int = MAX_FILES,
                max_total_bytes: int = MAX_TOTAL_BYTES) -> ExtractResult:
    """Unpack the images of a zip into dest_dir/zip-<content hash>/ (once per content, renamed into place
    when complete) and return where the classes are. Raises DataError for anything unsafe or unusable."""
    rules = dataclasses.replace(DATASET_ZIP, max_files=max_files, max_bytes=max_total_bytes)
    dest_dir = Path(dest_dir)
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    digest = _digest(stream)
    with open_zip(stream, rules) as archive:
        skipped: dict[str, int] = {}
        wanted: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for member, path in vetted_files(archive, rules):
            if archiver_metadata(path):
                skipped["archiver metadata"] = skipped.get("archiver metadata", 0) + 1
                continue
            if not is_image_name(path.name):
                skipped["not an image file"] = skipped.get("not an image file", 0) + 1
                continue
            wanted.append((member, path))
        if not wanted:
            raise DataError("The zip holds no images (jpg, jpeg, png, bmp, gif, webp). Zip a folder that "
                            "holds one sub-folder of images per class.")
        # Counted from the names, before a byte is unpacked: thousands of classes would train, then give a
        # run the run list calls damaged.
        classes = _class_count([path for _, path in wanted])
        check_class_count(classes)
        final = dest_dir / f"zip-{digest}"
        if final.is_dir():
            images = sum(1 for p in final.rglob("*") if p.is_file())
            return ExtractResult(_dataset_root(final), images, skipped, reused=True, classes=classes)
        dest_dir.mkdir(parents=True, exist_ok=True)
        partial = dest_dir / f".partial-{final.name}-{os.getpid()}-{id(stream)}"  # unique while this call runs
        try:
            extract_members(archive, wanted, partial, rules)
            try:
                os.rename(partial, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(partial)  # another session unpacked the same zip meanwhile
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return ExtractResult(_dataset_root(final), len(wanted), skipped, classes=classes)


def extract_members(archive: zipfile.ZipFile, members, target: Path, rules: ZipRules) -> None:
    """Write (ZipInfo, relative path) members from vetted_files under target, counting the bytes really
    unpacked: a zip's headers can understate sizes, so rules.max_bytes is enforced while writing."""
    error, outcome = rules.error, rules.outcome
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
                    if written > rules.max_bytes:
                        raise error(f"The zip unpacks to more than {rules.max_bytes / 1e6:,.0f} MB "
                                    f"(its headers understate the sizes); {outcome}.")
                    dst.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise error(f"'{member.filename}' in the zip is damaged, encrypted or uses an unsupported "
                        f"compression ({exc.__class__.__name__}); {outcome}.") from None
        except OSError as exc:  # a name this file system refuses, or a full disk
            raise error(f"'{member.filename}' could not be written ({exc.strerror}); {outcome}.") from None
