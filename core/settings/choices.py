"""A visitor's choices on the dashboard (dataset, hub handle, settings), kept on the server under an
unguessable token that the page puts in its address, so a reload or a second tab finds them again.

Only plain values are kept (text, numbers, true/false, short lists of text), within small bounds: the
token comes from a browser's address bar, so what it names is treated as a stranger's input.
"""
from __future__ import annotations

import json
import logging
import math
import secrets
import time
from pathlib import Path

from core.settings.files import read_json, write_atomically
from core.settings.paths import cache_dir

logger = logging.getLogger(__name__)

MAX_BYTES = 32 * 1024  # a few dozen settings; anything larger was not written by the Lab
MAX_TEXT = 2000
MAX_LIST = 50
KEPT_SESSIONS = 2000  # oldest files beyond this are removed, so visitors cannot fill the disk


def new_token() -> str:
    return secrets.token_hex(16)


def is_token(text) -> bool:
    return isinstance(text, str) and len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _folder() -> Path:
    return cache_dir() / "sessions"


def _plain(value) -> bool:
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value) and abs(value) < 1e15  # no NaN, and no 1e300 from a doctored file
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    if isinstance(value, list):
        return len(value) <= MAX_LIST and all(isinstance(v, str) and len(v) <= MAX_TEXT for v in value)
    return False


def plain_choices(values: dict) -> dict:
    """The entries of values that can be kept: short text keys with plain values."""
    return {k: v for k, v in values.items() if isinstance(k, str) and len(k) <= 64 and _plain(v)}


def load_choices(token: str) -> dict:
    """What was saved under token, or {} for an unknown, malformed or oversized file."""
    if not is_token(token):
        return {}
    data = read_json(_folder() / f"{token}.json", dict, max_bytes=MAX_BYTES)
    return plain_choices(data) if data is not None else {}


def save_choices(token: str, values: dict) -> None:
    if not is_token(token):
        raise ValueError("not a session token")
    text = json.dumps(plain_choices(values), sort_keys=True)
    if len(text) > MAX_BYTES:
        logger.warning("session choices over %d bytes were not saved", MAX_BYTES)
        return
    folder = _folder()
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / f"{token}.json", text)
    if secrets.randbelow(50) == 0:  # now and then, not on every save
        _prune(folder)


def _prune(folder: Path) -> None:
    try:
        files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return
    cutoff = time.time() - 30 * 86400
    for i, path in enumerate(files):
        try:
            if i < len(files) - KEPT_SESSIONS or path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass
