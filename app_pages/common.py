"""What every page shares: the session's chosen dataset, the sidebar, error display, model colours.

Nothing here imports TensorFlow, so the home page and the sidebar paint fast.
"""
from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from core.charts import MODEL_COLOURS, model_kind
from core.config import DEFAULT_SOURCE, MOBILENET_V2_HANDLE, MODEL_LABELS, ModelKind
from core.errors import LabError

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
    from core.paths import runs_dir

    return runs_dir()


# An opened source holds file lists or a TFDS builder and is only read afterwards, so sessions share it.
@st.cache_resource(show_spinner=False, max_entries=4, ttl=3600)
def open_source_cached(source: str, _progress=None):
    from core.config import DataConfig
    from core.data import open_source

    return open_source(DataConfig(source=source), progress=_progress)


# The check opens sockets to the download hosts; where DNS hangs that takes seconds, so every page and
# session shares one answer for a short while.
@st.cache_data(ttl=30, show_spinner=False)
def network_online() -> bool:
    from core.network import is_online

    return is_online()


def chip(kind: ModelKind | str | None) -> str:
    """A coloured dot and the model's name, for markdown."""
    k = kind if isinstance(kind, ModelKind) else model_kind(kind) if kind else None
    if k is None:
        return f"**{kind}**"
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


def sidebar() -> None:
    from core.artifacts import list_runs
    from core.paths import cache_dir

    keep_widget_state()
    with st.sidebar:
        st.markdown("#### Lab status")
        st.caption(f"Dataset: {describe_source(current_source())}")
        try:
            count = len(list_runs(runs_folder()).runs)
        except OSError:
            count = 0
        st.caption(f"Runs folder: `{runs_folder()}` ({count} finished)")
        st.caption(f"Cache folder: `{cache_dir()}`")
        online = network_online()
        st.caption("Network: " + ("online: TFDS and TF Hub downloads work" if online
                                  else "offline: use folders and local SavedModels"))
        st.markdown("  \n".join(chip(k) for k in ModelKind), unsafe_allow_html=True)


def lab_owned_handle(handle: str) -> bool:
    """Hub handles a model file named on a web page may use: downloads, or folders the Lab manages.

    A SavedModel is a TensorFlow program; loading one from an arbitrary server folder named in a model
    file would let whoever wrote that file pick what runs.
    """
    from core.hub import is_local
    from core.paths import cache_dir

    if not is_local(handle):
        return True
    path = Path(handle).expanduser().resolve()
    allowed = (cache_dir(), runs_folder(), Path.cwd())
    return any(path.is_relative_to(Path(root).expanduser().resolve()) for root in allowed)
