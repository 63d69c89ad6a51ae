"""The Lab's small JSON files, shared between threads and processes: written whole, updated under a lock, read
within bounds.

Run records, the job board's files, timings, download progress and saved session choices are all written
here. A writer goes through a temporary file of its own in the same folder, flushed to the disk before it
is renamed over the old one, so a reader sees the old file or the new one and never half of either, even
after a crash; when any step fails (a full or read-only disk) the temporary file is removed and the old
file left as it was. A reader refuses, without an exception, a file that is too large, nested too deep or
of the wrong kind: pages read these files on every rerun, and a damaged or hostile one must cost one log
line, not the page.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_BYTES = 1024 * 1024  # the Lab's own files are a few kilobytes; callers with larger ones say so
MAX_DEPTH = 32  # far deeper than the Lab's own files nest (a job's status, the deepest, has 5 levels)
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
TEMP_MARK = ".tmp-"  # in every temporary file's name: `.NAME.tmp-PID-RANDOM`

# A JSON string, closing quote optional: possessive, so that no input makes the scan go back over itself
# (an unterminated string only swallows the rest of a file that is not JSON anyway).
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")
_REPORTED_KEPT = 1000
_reported: dict[tuple, None] = {}
_reported_lock = threading.Lock()


def write_atomically(path: str | Path, data: bytes | str) -> None:
    """Replace path's contents with data, whole or not at all.

    The temporary name is unique to this call, not just this process: two threads of one server writing the
    same file each write their own, and the last rename wins whole.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            # On the disk before the rename: after a crash the new name never points at an empty file.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write data as JSON to path atomically (write_atomically)."""
    write_atomically(path, json.dumps(data, indent=indent, sort_keys=sort_keys))


def read_json(path: str | Path, kind: type | tuple[type, ...] = dict, *, max_bytes: int = MAX_BYTES,
              max_depth: int = MAX_DEPTH):
    """The JSON value in path if it is a `kind` within the bounds, else None.

    None for a missing file too; a file that is there but unreadable, larger than max_bytes, nested deeper
    than max_depth, not JSON or of another kind is logged once (per version of the file) and read as
    missing. At most max_bytes + 1 bytes are ever read, and the nesting is measured before parsing.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the reader
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return _bad(path, None, exc.strerror or type(exc).__name__)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return _bad(path, info, "not a regular file")
        if info.st_size > max_bytes:
            return _bad(path, info, f"{info.st_size:,} bytes, more than the {max_bytes:,} allowed")
        chunks, left = [], max_bytes + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        return _bad(path, None, exc.strerror or type(exc).__name__)
    finally:
        os.close(fd)
    if len(raw) > max_bytes:  # grew since it was measured
        return _bad(path, info, f"more than the {max_bytes:,} bytes allowed")
    if too_deep(raw, max_depth):
        return _bad(path, info, f"nested more than {max_depth} levels deep")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return _bad(path, info, f"not JSON ({exc.__class__.__name__})")
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _kinds(kind):
        names = " or ".join(k.__name__ for k in _kinds(kind))
        return _bad(path, info, f"a JSON {type(value).__name__}, not a {names}")
    return value


def too_deep(raw: bytes, max_depth: int) -> bool:
    """Whether raw nests arrays and objects more than max_depth levels deep, found without recursing.

    Strings are taken out (their brackets are text), then each pass removes the innermost empty pairs,
    one level, at the regular expression engine's speed; brackets left after max_depth passes are deeper.
    """
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw))
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = _EMPTY_PAIR.sub(b"", brackets)
    return bool(brackets)


def _kinds(kind) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _bad(path: Path, info: os.stat_result | None, reason: str) -> None:
    """Log that path was ignored, once per version of the file (pages read the same files every rerun)."""
    version = (info.st_size, info.st_mtime_ns, info.st_ino) if info is not None else None
    key = (str(path), version, reason)
    with _reported_lock:
        if key in _reported:
            return
        if len(_reported) >= _REPORTED_KEPT:
            _reported.pop(next(iter(_reported)))
        _reported[key] = None
    logger.warning("ignoring %s: %s", path, reason)


@contextlib.contextmanager
def locked(lock_path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on lock_path (created if missing) for the block.

    fcntl.flock belongs to an open file, so every caller, thread or process, waits for the one holding
    it; the kernel drops the lock of a process that dies.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def try_lock(handle) -> bool:
    """Take an exclusive lock on the open file handle without waiting; False while someone else holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_path_of(path: str | Path) -> Path:
    """The lock file that guards updates of path: `.NAME.lock` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def update_json(path: str | Path, change: Callable, kind: type = dict, *, max_bytes: int = MAX_BYTES,
                max_depth: int = MAX_DEPTH, indent: int | None = 2):
    """Replace path's JSON with change(current) under the lock beside it (lock_path_of), and return it.

    Two processes updating at once then each see the other's change; reading and writing without the lock
    loses one of them. A missing or bad file (read_json) counts as an empty `kind`, so the update replaces it.
    """
    path = Path(path)
    with locked(lock_path_of(path)):
        current = read_json(path, kind, max_bytes=max_bytes, max_depth=max_depth)
        updated = change(kind() if current is None else current)
        write_json(path, updated, indent=indent)
    return updated


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree if it is there; what cannot be removed is left."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def replace_path(staged: Path, final: Path) -> None:
    """Rename staged (a file or a folder) to final, whole; a folder already at final, which a rename cannot
    replace, is first moved aside under a temporary name and then deleted."""
    if final.is_dir() and not final.is_symlink():
        aside = final.with_name(f".{final.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(6)}")
        os.rename(final, aside)
        os.replace(staged, final)
        remove_path(aside)
    else:
        os.replace(staged, final)


def is_disk_full(exc: BaseException) -> bool:
    """Whether exc is a write refused for lack of space (a full disk, a quota, a file size limit)."""
    return isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS


def is_read_only(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in READ_ONLY_ERRNOS


def free_space(path: str | Path) -> int | None:
    """Bytes this user may still write on path's disk (asked of its nearest existing folder); None if unknown."""
    path = Path(path)
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None
