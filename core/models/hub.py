"""TF Hub handles: URL, Kaggle handle or local SavedModel folder, checked before anything downloads."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from core.settings.errors import ModelFileError, OfflineError

KAGGLE_PREFIX = "https://www.kaggle.com/models/"
# owner/model/framework/variation[/version], as Kaggle Models writes it
_KAGGLE_HANDLE = re.compile(r"^[\w.-]+/[\w.-]+/[\w.-]+/[\w.-]+(/\d+)?$")


def normalise_handle(handle: str) -> str:
    """A URL or an absolute local path that hub.KerasLayer accepts."""
    handle = (handle or "").strip()
    if not handle:
        raise ModelFileError("The hub handle is empty: give a TF Hub URL, a Kaggle handle or a SavedModel folder.")
    if handle.startswith(("http://", "https://", "gs://")):
        return handle
    path = Path(handle).expanduser()
    if path.exists():
        return str(path.resolve())
    if _KAGGLE_HANDLE.match(handle) and not handle.startswith((".", "/", "~")):
        return KAGGLE_PREFIX + handle
    raise ModelFileError(
        f"Hub handle '{handle}' is neither a URL nor an existing folder. Give a TF Hub URL "
        "(e.g. https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4), a Kaggle handle, "
        "or the path of a SavedModel folder."
    )


def is_local(handle: str) -> bool:
    return not handle.startswith(("http://", "https://", "gs://"))


def cached_module_dir(handle: str) -> Path:
    """Where tensorflow_hub keeps a downloaded module: the cache folder plus sha1 of the handle."""
    from core.settings.paths import hub_cache_dir

    return hub_cache_dir() / hashlib.sha1(handle.encode("utf8")).hexdigest()


def is_cached(handle: str) -> bool:
    return (cached_module_dir(handle) / "saved_model.pb").is_file()


def check_available(handle: str) -> str:
    """Normalise the handle and make sure loading it will not hang on a dead network.

    Local folders must hold a SavedModel; URLs must be in the hub cache or the network must be up.
    """
    from core.data.network import is_online, offline_message
    from core.settings.paths import hub_cache_dir

    handle = normalise_handle(handle)
    if is_local(handle):
        if not (Path(handle) / "saved_model.pb").is_file():
            raise ModelFileError(f"'{handle}' is not a SavedModel folder (it has no saved_model.pb).")
        return handle
    if not is_cached(handle) and not is_online():
        raise OfflineError(
            offline_message(f"the hub module '{handle}' (looked for in {hub_cache_dir()})")
        )
    return handle


TRUSTED_HUB_PREFIXES = ("https://tfhub.dev/", "https://www.kaggle.com/models/", "https://kaggle.com/models/")


def web_upload_handle_allowed(handle: str) -> bool:
    """Whether a model uploaded through the web page may point its KerasLayer at this handle.

    A hosted dashboard must not let a stranger's file make the server load an arbitrary SavedModel from its
    disk (or fetch one from an arbitrary host): only TF Hub / Kaggle URLs and folders the Lab itself owns.
    """
    from core.settings.paths import cache_dir, runs_dir

    if handle.startswith(TRUSTED_HUB_PREFIXES):
        return ".." not in handle
    if not is_local(handle):
        return False
    try:
        path = Path(handle).expanduser().resolve()
    except (OSError, RuntimeError):
        return False
    return any(path.is_relative_to(root.expanduser().resolve()) for root in (cache_dir(), runs_dir()))


def check_web_handle(handle: str) -> str:
    """Normalise a hub handle typed into a hosted page; refuse server folders the Lab does not own.

    On a public host the Experiments page's handle field is a server path like any other: a SavedModel
    is a TensorFlow graph, which can read files, so strangers may only name downloads and the Lab's own
    folders (the generated demo's pretrained backbone lives in the cache folder).
    """
    normalised = normalise_handle(handle)
    if not web_upload_handle_allowed(normalised):
        raise ModelFileError(
            f"This server only uses TF Hub / Kaggle URLs or folders inside its cache or runs folder as the hub "
            f"handle, not '{handle.strip()}'."
        )
    return normalised
