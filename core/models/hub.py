"""TF Hub handles: URL, Kaggle handle or local SavedModel folder, checked before anything downloads."""
from __future__ import annotations

import hashlib
from pathlib import Path

from core.settings.config import KAGGLE_PREFIX, is_kaggle_handle
from core.settings.errors import ModelFileError, OfflineError, error_line


def normalise_handle(handle: str) -> str:
    """A URL or an absolute local path that hub.KerasLayer accepts."""
    handle = (handle or "").strip()
    if not handle:
        raise ModelFileError("The hub handle is empty: give a TF Hub URL, a Kaggle handle or a SavedModel folder.")
    if not is_local(handle):
        return handle
    path = Path(handle).expanduser()
    if path.exists():
        return str(path.resolve())
    if is_kaggle_handle(handle):
        return KAGGLE_PREFIX + handle
    raise ModelFileError(
        f"Hub handle '{handle}' is neither a URL nor an existing folder. Give a TF Hub URL "
        "(e.g. https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4), a Kaggle handle, "
        "or the path of a SavedModel folder."
    )


# A handle written "./NAME" names a SavedModel folder beside the model file, inside its run folder: a run
# zip carries its backbone that way, so the run works wherever it is unpacked.
RELATIVE_PREFIX = "./"


def resolve_relative(handle: str, base: str | Path) -> str:
    """handle with a "./" one made absolute against base (the model file's folder); others unchanged.

    A relative handle must stay inside base: "./../x" could otherwise name any folder on the machine.
    """
    if not isinstance(handle, str) or not handle.startswith(RELATIVE_PREFIX):
        return handle
    root = Path(base).expanduser().resolve()
    target = (root / handle[len(RELATIVE_PREFIX):]).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ModelFileError(f"The hub handle '{handle}' leaves the model's own folder; refusing it.")
    return str(target)


def is_local(handle: str) -> bool:
    return not handle.startswith(("http://", "https://", "gs://"))


def _lab_folders() -> tuple[Path, Path]:
    from core.settings.paths import cache_dir, runs_dir

    return cache_dir(), runs_dir()


def cached_module_dir(handle: str) -> Path:
    """Where tensorflow_hub keeps a downloaded module: the cache folder plus sha1 of the handle."""
    from core.settings.paths import hub_cache_dir

    return hub_cache_dir() / hashlib.sha1(handle.encode("utf8")).hexdigest()


def is_cached(handle: str) -> bool:
    return (cached_module_dir(handle) / "saved_model.pb").is_file()


def check_available(handle: str) -> str:
    """Normalise the handle and make sure loading it will not hang on a dead network.

    Local folders must hold a SavedModel; URLs must be in the hub cache or their host must answer.
    """
    from core.data.network import DOWNLOAD_HOSTS, hosts_of, is_online, offline_message
    from core.settings.paths import hub_cache_dir

    handle = normalise_handle(handle)
    if is_local(handle):
        if not (Path(handle) / "saved_model.pb").is_file():
            raise ModelFileError(f"'{handle}' is not a SavedModel folder (it has no saved_model.pb).")
        return handle
    # The handle's own host is the one to ask: a mirror or a local stand-in server is online when it answers.
    if not is_cached(handle) and not is_online(hosts_of([handle]) or DOWNLOAD_HOSTS):
        raise OfflineError(
            offline_message(f"the hub module '{handle}' (looked for in {hub_cache_dir()})")
        )
    return handle


def fetch(handle: str) -> str:
    """Download a URL handle into the hub cache once (a no-op when cached or local); the normalised handle.

    TF Hub asks for `?tf-hub-format=compressed` and unpacks the tarball into the cache folder; a failure
    here names the handle and what to do, instead of surfacing later as a layer that cannot be built.
    """
    import tarfile
    import urllib.error

    import tensorflow_hub as hub

    handle = check_available(handle)
    if is_local(handle) or is_cached(handle):
        return handle
    from core.settings.paths import configure_caches, hub_cache_dir

    configure_caches()  # TF Hub reads TFHUB_CACHE_DIR: the module must land where is_cached looks

    next_step = ("Next: check the handle, or download the module elsewhere and give its SavedModel folder as the "
                 f"handle (the cache folder is {hub_cache_dir()}).")
    try:
        hub.resolve(handle)
    except urllib.error.HTTPError as exc:
        raise ModelFileError(f"{handle} answered HTTP {exc.code}. {next_step}") from None
    except (urllib.error.URLError, OSError, EOFError, tarfile.TarError, ValueError) as exc:
        raise ModelFileError(f"Downloading the hub module {handle} failed ({error_line(exc)}). "
                             f"{next_step}") from None
    return handle


TRUSTED_HUB_PREFIXES = ("https://tfhub.dev/", "https://www.kaggle.com/models/", "https://kaggle.com/models/")


def web_upload_handle_allowed(handle: str) -> bool:
    """Whether a model uploaded through the web page may point its KerasLayer at this handle.

    A hosted dashboard must not let a stranger's file make the server load an arbitrary SavedModel from its
    disk (or fetch one from an arbitrary host): only TF Hub / Kaggle URLs and folders the Lab itself owns.
    """
    from core.settings.paths import resolves_inside

    if handle.startswith(TRUSTED_HUB_PREFIXES):
        return ".." not in handle
    return is_local(handle) and resolves_inside(handle, _lab_folders())


WEB_HANDLE_REFUSED = ("This server only uses TF Hub / Kaggle URLs or folders inside its cache or runs folder as "
                      "the hub handle.")


def check_web_handle(handle: str) -> str:
    """Normalise a hub handle typed into a hosted page; refuse server folders the Lab does not own.

    On a public host the Experiments page's handle field is a server path like any other: a SavedModel
    is a TensorFlow graph, which can read files, so strangers may only name downloads and the Lab's own
    folders (the generated demo's pretrained backbone lives in the cache folder).

    A path outside those folders is refused from its text, before anything on the disk is looked at, with one
    message that does not repeat it: the answer is the same whether the folder exists or not, so the field
    cannot be used to learn which folders the server has. For the same reason a Kaggle-shaped handle is
    always Kaggle's here, never a folder that happens to exist beside the server.
    """
    from core.settings.paths import written_inside

    text = (handle or "").strip()
    if not text or not is_local(text):
        normalised = normalise_handle(text)  # the empty handle's message, or the URL itself
    elif is_kaggle_handle(text):
        normalised = KAGGLE_PREFIX + text
    elif not written_inside(text, _lab_folders()):
        raise ModelFileError(WEB_HANDLE_REFUSED)
    else:
        normalised = normalise_handle(text)  # inside the Lab's own folders, whether it exists may be said
    if not web_upload_handle_allowed(normalised):  # resolved: a link inside the Lab's folders leading out
        raise ModelFileError(WEB_HANDLE_REFUSED)
    return normalised
