"""Where the Lab keeps its caches and runs, and whether a path a stranger gives lies inside them.

One persistent cache folder holds the TF Hub module cache and the TFDS data_dir, so a model saved while
online re-resolves its hub handle offline later. Both folders are configurable through the environment.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def cache_dir() -> Path:
    """The persistent cache folder: $LAB_CACHE_DIR, else ~/.cache/transfer-learning-lab."""
    env = os.environ.get("LAB_CACHE_DIR")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "transfer-learning-lab"
    return path


def runs_dir() -> Path:
    """Where run directories go: $LAB_RUNS_DIR, else ./runs."""
    return Path(os.environ.get("LAB_RUNS_DIR", "runs")).expanduser()


def tfds_dir() -> Path:
    return cache_dir() / "tfds"


def hub_cache_dir() -> Path:
    """$TFHUB_CACHE_DIR if the user set it, else a folder inside the Lab's cache."""
    env = os.environ.get("TFHUB_CACHE_DIR")
    return Path(env).expanduser() if env else cache_dir() / "tfhub"


def uploads_dir() -> Path:
    return cache_dir() / "uploads"


def configure_caches() -> None:
    """Point TF Hub at the persistent cache before any hub handle is resolved."""
    hub = hub_cache_dir()
    hub.mkdir(parents=True, exist_ok=True)
    os.environ["TFHUB_CACHE_DIR"] = str(hub)
    tfds_dir().mkdir(parents=True, exist_ok=True)


def written_inside(path: str, roots: Iterable[Path]) -> bool:
    """Whether path, read as text only (nothing it names is looked up), lies inside one of roots.

    For a stranger's input: refused before the disk is asked, the answer never says whether it exists.
    """
    try:
        written = Path(os.path.abspath(os.path.expanduser(path)))
        forms = {form for root in roots for form in (Path(os.path.abspath(root.expanduser())),
                                                     root.expanduser().resolve())}
    except (OSError, RuntimeError, ValueError):
        return False
    return any(written.is_relative_to(form) for form in forms)


def resolves_inside(path: str, roots: Iterable[Path]) -> bool:
    """Whether path, its links followed, lies inside one of roots (a link inside them may lead out)."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(resolved.is_relative_to(root.expanduser().resolve()) for root in roots)
