"""What every page shares: the session's chosen dataset, the sidebar, error display, model colours.

Nothing here imports TensorFlow, so the home page and the sidebar paint fast.
"""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import streamlit as st

from app_pages.parts import session_keys as keys
from core.present.charts import model_kind
from core.settings.config import DEFAULT_SOURCE, MOBILENET_V2_HANDLE, ModelKind, spec
from core.settings.errors import LabError
from core.settings.text import markdown_literal

logger = logging.getLogger(__name__)

SOURCE_KEY = keys.LAB_SOURCE  # the name Predict imports it by; every key is declared in session_keys


def skip_keras_clear_session() -> None:
    """Stop Streamlit from calling Keras 3's clear_session after every script run.

    Streamlit does that to free a Keras app's models between reruns, but here it frees nothing (the Lab's
    models are tf_keras ones, and its cached models must stay) and costs a full garbage collection
    (~0.17 s holding the GIL with TensorFlow loaded) and TensorFlow's kernel cache after every run:
    every 2 s for each visitor watching a training, which stalled a server with a few visitors. The
    only other clean-up Streamlit does there closes matplotlib figures, which the Lab never draws.
    """
    from streamlit.runtime.scriptrunner import script_runner

    def keep_state() -> None:
        """Nothing to clean: no Keras 3 models and no matplotlib figures live in this server."""

    script_runner._clean_problem_modules = keep_state


def session_token() -> str:
    """This browser session's key (restore_session gives it one before any page runs)."""
    return st.session_state[keys.LAB_TOKEN]


def current_source() -> str:
    return st.session_state.get(keys.LAB_SOURCE, DEFAULT_SOURCE)


def current_classes() -> list[str] | None:
    """The current dataset's class names when this session has opened it on the Dataset page, else None
    (opening one here could mean minutes of TFDS retries offline)."""
    source = current_source()
    if st.session_state.get(keys.DS_LOADED) != source:
        return None
    try:
        return list(open_source_cached(source).info.class_names)
    except Exception:  # the Dataset page shows what is wrong with it; here it only means "not known"
        logger.debug("the current dataset %s could not be reopened", source)  # asked on every run of a page
        return None


def set_source(source: str) -> None:
    st.session_state[keys.LAB_SOURCE] = source


def current_handle() -> str:
    return st.session_state.get(keys.LAB_HANDLE, MOBILENET_V2_HANDLE)


def set_handle(handle: str) -> None:
    """Make handle the transfer model's hub handle, also where the Experiments page already has a field."""
    st.session_state[keys.LAB_HANDLE] = handle
    st.session_state[keys.EXP_T_HANDLE] = handle_field_text(handle)


CACHE_HANDLE_PREFIX = "cache:"  # a hosted page's way of writing a hub folder inside the cache folder


def handle_field_text(handle: str) -> str:
    """The hub handle as the Experiments field shows it. On a public host a folder inside the cache folder
    (the generated demo's backbone) is written relative to it, "cache:demo/backbone-v1": the page never
    shows the server's own path."""
    from core.settings.paths import cache_dir
    from core.settings.presets import active_preset

    if active_preset().allow_local_paths or "://" in handle:
        return handle
    try:
        inside = Path(handle).resolve().relative_to(cache_dir().resolve())
    except (ValueError, OSError):
        return handle
    return CACHE_HANDLE_PREFIX + inside.as_posix()


def handle_from_field(text: str) -> str:
    """The hub handle a field's text names: "cache:..." is a folder inside the cache folder (judged by the
    preset's handle check like any other path, "../" included); anything else is itself."""
    import os

    from core.settings.paths import cache_dir

    text = text.strip()
    if not text.startswith(CACHE_HANDLE_PREFIX):
        return text
    return os.path.normpath(cache_dir() / text.removeprefix(CACHE_HANDLE_PREFIX).lstrip("/"))


def describe_source(source: str) -> str:
    from core.settings.presets import active_preset
    from core.settings.source import Source

    # Shown in code spans, where only a backtick could end the span and let the rest become markup.
    parsed = Source.parse(source.replace("`", "'"))
    if parsed.is_folder:
        # On a public host the folder is one of the server's (an unpacked upload, the demo): its name only.
        return f"folder `{parsed.value if active_preset().allow_local_paths else parsed.name}`"
    if parsed.is_tfds:
        return f"TFDS `{parsed.value}`"
    return f"`{str(parsed).removesuffix(':')}`"


def describe_handle(handle: str) -> str:
    """A hub handle for a page, in a code span: a URL as it is; a folder's path only where the preset
    allows server paths, else the folder's own name (the demo's backbone lives in the server's cache)."""
    from core.models.hub import is_local
    from core.settings.presets import active_preset

    handle = handle.replace("`", "'")
    if not is_local(handle) or active_preset().allow_local_paths:
        return f"`{handle}`"
    return f"`{Path(handle).name or '?'}` (a SavedModel folder on the server)"


def runs_folder() -> Path:
    from core.settings.paths import runs_dir

    return runs_dir()


# An opened source holds file lists or a TFDS builder and is only read afterwards, so sessions share it.
@st.cache_resource(show_spinner=False, max_entries=4, ttl=3600)
def open_source_cached(source: str, _progress=None):
    from core.data.sources import open_source
    from core.settings.config import DataConfig

    return open_source(DataConfig(source=source), progress=_progress)


# The check opens sockets to the download hosts; where DNS hangs that takes seconds, so every page and
# session shares one answer for a short while.
@st.cache_data(ttl=30, show_spinner=False)
def network_online() -> bool:
    from core.data.downloads import configured_hosts
    from core.data.network import is_online

    return is_online(configured_hosts())


def chip(kind: ModelKind | str | None) -> str:
    """A coloured dot and the model's name, for markdown; a name the Lab does not know is shown as text."""
    k = kind if isinstance(kind, ModelKind) else model_kind(kind) if kind else None
    if k is None:
        return f"**{markdown_literal(kind) or '?'}**"
    return f'<span style="color:{spec(k).colour}; font-size:1.1em">●</span> **{spec(k).label}**'


# A character of a path in a message: anything but what ends one (spaces, quotes, brackets, separators).
_PATH_CHAR = r"[^\s'\"`,;()<>\[\]{}|]"
# Where a path may start: not inside a word, a relative path or a URL (whose "//" is left alone).
_PATH_START = r"(?<![\w./~-])"


def _lab_roots() -> list[tuple[str, str]]:
    """(folder as text, what to call it) for the Lab's own folders, longest first, as written and resolved."""
    from core.settings.paths import cache_dir, hub_cache_dir, runs_dir

    roots = {}
    for folder, name in ((cache_dir(), "cache folder"), (hub_cache_dir(), "cache folder"), (runs_dir(), "runs folder")):
        for form in (folder.expanduser().absolute(), folder.expanduser().resolve()):
            roots.setdefault(str(form), name)
    return sorted(roots.items(), key=lambda item: -len(item[0]))


def public_text(text: str) -> str:
    """text as a page may show it: where the preset keeps server paths off the pages, every path in it
    becomes a neutral word ("the cache folder", "the runs folder", "a server folder"; a dataset's
    "folder:PATH" its folder's name); elsewhere unchanged.

    Messages from core name folders for the command line and a local Lab; a hosted Lab's visitors must not
    learn its layout from them (a full disk, a missing download, an unpacked upload).
    """
    from core.settings.presets import active_preset

    text = str(text)
    if active_preset().allow_local_paths:
        return text
    roots = _lab_roots()
    known = "|".join(re.escape(root) for root, _ in roots)
    # A path has a name after its first slash: "TF Hub / Kaggle" is text.
    pattern = re.compile(rf"(?P<lead>\s?){_PATH_START}(?P<path>(?:{known}){_PATH_CHAR}*|~?/(?!/){_PATH_CHAR}+)")

    def neutral(match: re.Match) -> str:
        lead, path = match.group("lead"), match.group("path")
        trail = path[len(path.rstrip(".:!?")):]  # a sentence's full stop is not part of the path
        path = path[:len(path) - len(trail)]
        before = match.string[:match.start()]
        if before.endswith("folder:"):  # a data source: the dataset's own name, as describe_source gives it
            return lead + (Path(path).name or "?") + trail
        name = next((n for r, n in roots if path == r or path.startswith(r.rstrip("/") + "/")), None)
        if name and before.rstrip().endswith(name):  # "the cache folder /srv/..." says it already
            return trail
        return lead + (f"the {name}" if name else "a server folder") + trail

    return pattern.sub(neutral, text)


def show_error(exc: BaseException, prefix: str = "") -> None:
    """One st.error line for an error the user can act on; anything else is logged and summarised.

    Its text goes through public_text: messages from core may name the server's folders."""
    if isinstance(exc, LabError):
        st.error(public_text(f"{prefix}{exc}"), icon=":material/error:")
    else:
        logger.exception("unexpected error on a page")
        st.error(f"{prefix}Something went wrong ({exc.__class__.__name__}). The server log has the details.",
                 icon=":material/error:")


# Runs imported through the pages, by id: empty files in a hidden folder of the runs folder (listings skip
# hidden folders), so that every session of this runs folder, after a restart too, knows them.
IMPORTS_DIR = ".web-imports"
MAX_OWN_IMPORTS = 50  # the saved choices keep lists of at most 50 names


def note_imported_run(run_id: str) -> None:
    """Remember that this session imported run_id: a default pick for it, never for other visitors.

    Anyone can import a run on a hosted Lab; were it everyone's default (the newest run on the charts, the
    best one on Predict), one visitor's upload would be what every later visitor sees first.
    """
    run_id = Path(run_id).name
    own = [i for i in st.session_state.get(keys.EXP_IMPORTED, []) if i != run_id]
    st.session_state[keys.EXP_IMPORTED] = (own + [run_id])[-MAX_OWN_IMPORTS:]
    try:
        folder = runs_folder() / IMPORTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        (folder / run_id).touch()
    except OSError as exc:  # a full or read-only disk: the run is still imported, only not kept out of defaults
        logger.warning("could not record the imported run %s: %s", run_id, exc)


def others_imports() -> set[str]:
    """Ids of runs other sessions imported through the pages: never picked by default here, only by choice."""
    try:
        imported = {path.name for path in (runs_folder() / IMPORTS_DIR).iterdir()}
    except OSError:  # none imported yet, or an unreadable folder
        return set()
    return imported - set(st.session_state.get(keys.EXP_IMPORTED, []))


def tidy_runs_folder() -> None:
    """Remove run folders that killed training processes left unfinished (a live writer's stay).

    streamlit_app.py calls it before every page, so the run history never offers what a crashed or killed
    server left behind.
    """
    from core.runs.folders import clean_incomplete

    try:
        for path in clean_incomplete(runs_folder()):
            logger.info("removed the unfinished run folder %s (its training process is gone)", path)
    except OSError as exc:  # a read-only or vanished runs folder: nothing to tidy, nothing to break
        logger.warning("could not tidy the runs folder: %s", exc)


def sidebar() -> None:
    """The Lab's status in the sidebar: the dataset, the runs, the network and the models' colours. It only
    draws: the session is restored and the runs folder tidied before it (streamlit_app.py)."""
    from core.runs.folders import list_runs
    from core.settings.paths import cache_dir
    from core.settings.presets import active_preset

    with st.sidebar:
        st.markdown("#### Lab status")
        st.caption(f"Dataset: {describe_source(current_source())}")
        try:
            count = len(list_runs(runs_folder()).runs)
        except (OSError, LabError):
            count = 0
        # The server's own folders are the user's business only on their own machine; a public host keeps
        # its layout to itself.
        if active_preset().allow_local_paths:
            st.caption(f"Runs folder: `{runs_folder()}` ({count} finished)")
            st.caption(f"Cache folder: `{cache_dir()}`")
        else:
            st.caption(f"Runs: {count} finished")
        online = network_online()
        st.caption("Network: " + ("online: TFDS and TF Hub downloads work" if online
                                  else "offline: use folders and local SavedModels"))
        st.markdown("  \n".join(chip(k) for k in ModelKind), unsafe_allow_html=True)


_warmed: set[tuple[str, int]] = set()
_warmed_lock = threading.Lock()


def warm_predict(handle: str, image_size: int) -> None:
    """Load, in the background, the hub module that Predict will classify a training's frozen transfer model
    with, while the job trains: Try it then answers at once, instead of the server importing TensorFlow and
    loading the module at the moment a whole room presses it. Once per module and size; a module not yet in
    the hub cache, or one that fails, is left to Predict, which says what is wrong."""
    key = (handle, image_size)
    with _warmed_lock:
        if key in _warmed:
            return
        _warmed.add(key)

    def load() -> None:
        from core.models.hub import check_available, is_cached, is_local, normalise_handle
        from core.runs.predict import shared_backbone

        try:
            normal = normalise_handle(handle)
            if is_local(normal) or is_cached(normal):
                stored = check_available(normal)  # the handle a trained model's file names
                shared_backbone(stored, image_size, stored)
        except Exception:
            logger.info("the hub module %s was not loaded ahead of Predict", handle, exc_info=True)

    threading.Thread(target=load, name="lab-warm-predict", daemon=True).start()
