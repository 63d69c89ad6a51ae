"""What every page shares: the session's chosen dataset, the sidebar, error display, model colours.

Nothing here imports TensorFlow, so the home page and the sidebar paint fast.
"""
from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from core.present.charts import MODEL_COLOURS, model_kind
from core.settings.config import DEFAULT_SOURCE, MOBILENET_V2_HANDLE, MODEL_LABELS, ModelKind
from core.settings.errors import LabError

logger = logging.getLogger(__name__)

# st.session_state keys that more than one page reads.
SOURCE_KEY = "lab_source"  # the dataset the Experiments page trains on ("tfds:NAME" / "folder:PATH")
HANDLE_KEY = "lab_handle"  # the hub handle the transfer model starts from
HANDLE_FIELD_KEY = "exp_t_handle"  # the Experiments page's hub handle field, filled from HANDLE_KEY
DEMO_NOTE_KEY = "lab_demo_note"


def current_source() -> str:
    return st.session_state.get(SOURCE_KEY, DEFAULT_SOURCE)


def set_source(source: str) -> None:
    st.session_state[SOURCE_KEY] = source


def current_handle() -> str:
    return st.session_state.get(HANDLE_KEY, MOBILENET_V2_HANDLE)


def set_handle(handle: str) -> None:
    """Make handle the transfer model's hub handle, also where the Experiments page already has a field."""
    st.session_state[HANDLE_KEY] = handle
    st.session_state[HANDLE_FIELD_KEY] = handle


def describe_source(source: str) -> str:
    kind, _, value = source.partition(":")
    if kind == "folder":
        return f"folder `{value}`"
    if kind == "tfds":
        return f"TFDS `{value}`"
    return f"`{source}`"


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
    from core.data.network import is_online

    return is_online()


# Markdown's punctuation that can make markup inline (links, images, emphasis, code, tables; ":" and "$"
# start Streamlit's icons, colours and maths); backslashed, each shows as itself. Dots and dashes, which
# matter only at the start of a line, stay as they are so that file names read plainly.
_MARKDOWN_SPECIALS = frozenset("\\`*_{}[]()#+!|~:$")
_HTML_SPECIALS = {"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&#x27;"}


def plain(text) -> str:
    """Text from a file, run, model or upload, made safe to place in st.markdown (with or without HTML).

    HTML's characters become entities and markdown's are backslashed, so `<iframe srcdoc=...>`,
    `[x](javascript:...)` or `:red[...]` show literally and never become markup. Line breaks become spaces.
    """
    out = []
    for char in " ".join(str(text).split()) if text is not None else "":
        if char in _HTML_SPECIALS:
            out.append(_HTML_SPECIALS[char])
        elif char in _MARKDOWN_SPECIALS:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def chip(kind: ModelKind | str | None) -> str:
    """A coloured dot and the model's name, for markdown; a name the Lab does not know is shown as text."""
    k = kind if isinstance(kind, ModelKind) else model_kind(kind) if kind else None
    if k is None:
        return f"**{plain(kind) or '?'}**"
    return f'<span style="color:{MODEL_COLOURS[k]}; font-size:1.1em">●</span> **{MODEL_LABELS[k]}**'


def show_error(exc: BaseException, prefix: str = "") -> None:
    """One st.error line for an error the user can act on; anything else is logged and summarised."""
    if isinstance(exc, LabError):
        st.error(f"{prefix}{exc}", icon=":material/error:")
    else:
        logger.exception("unexpected error on a page")
        st.error(f"{prefix}Something went wrong ({exc.__class__.__name__}). The server log has the details.",
                 icon=":material/error:")


def keep_widget_state(prefixes: tuple[str, ...] = ("exp_", "pred_", "ds_")) -> None:
    """Keep settings when the user visits another page and comes back.

    Streamlit forgets a widget's value once a run does not draw it; writing the value back as plain
    session state before any page draws its widgets keeps it. Buttons and file uploaders refuse values
    set this way, so their keys must not start with these prefixes.
    """
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(prefixes):
            st.session_state[key] = st.session_state[key]


def tidy_runs_folder() -> None:
    """Remove run folders that killed training processes left unfinished (a live writer's stay).

    Runs before every page, so the run history never offers what a crashed or killed server left behind.
    """
    from core.runs.folders import clean_incomplete

    try:
        for path in clean_incomplete(runs_folder()):
            logger.info("removed the unfinished run folder %s (its training process is gone)", path)
    except OSError as exc:  # a read-only or vanished runs folder: nothing to tidy, nothing to break
        logger.warning("could not tidy the runs folder: %s", exc)


def sidebar() -> None:
    from core.runs.folders import list_runs
    from core.settings.paths import cache_dir

    keep_widget_state()
    tidy_runs_folder()
    with st.sidebar:
        st.markdown("#### Lab status")
        st.caption(f"Dataset: {describe_source(current_source())}")
        try:
            count = len(list_runs(runs_folder()).runs)
        except (OSError, LabError):
            count = 0
        st.caption(f"Runs folder: `{runs_folder()}` ({count} finished)")
        st.caption(f"Cache folder: `{cache_dir()}`")
        online = network_online()
        st.caption("Network: " + ("online: TFDS and TF Hub downloads work" if online
                                  else "offline: use folders and local SavedModels"))
        st.markdown("  \n".join(chip(k) for k in ModelKind), unsafe_allow_html=True)
