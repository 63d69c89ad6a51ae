"""A browser session's life across runs: its key, its choices brought back on a reload, saved after a run,
and widget values kept while the user is on another page.

streamlit_app.py calls these in order on every run (restore_session, keep_widget_state, save_session before
the page; save_session after it); which keys persist is declared in session_keys, nowhere else.
"""
from __future__ import annotations

import logging
import time

import streamlit as st

from app_pages.parts import session_keys as keys
from app_pages.parts.common import session_token
from app_pages.parts.session_keys import persists

logger = logging.getLogger(__name__)


def keep_widget_state() -> None:
    """Keep settings when the user visits another page and comes back.

    Streamlit forgets a widget's value once a run does not draw it; writing the value back as plain
    session state before any page draws its widgets keeps it. Done for every key declared to persist:
    buttons, uploaders and cameras refuse values set this way, and their keys never persist.
    """
    for key in list(st.session_state.keys()):
        if persists(key):
            st.session_state[key] = st.session_state[key]


def _choices() -> dict:
    from core.settings.choices import plain_choices

    return plain_choices({k: v for k, v in st.session_state.items() if persists(k)})


def restore_session() -> None:
    """Give this browser session its key (from the address, or a new one) and bring back its choices.

    The key sits in the page's address as ?s=..., so a reload, or the same address in a new tab, finds
    the same dataset, settings and trainings. Sharing a training uses a link without it.

    Keys are issued by this server: one from an address is taken only when the server holds choices saved
    under it. Any other (made up, or planted through a link so that its sender could later open the same
    session and its trainings) is replaced by a new key, and the address shows the new one.
    """
    from core.settings.choices import is_token, load_choices, new_token

    if keys.LAB_TOKEN not in st.session_state:
        from_url = st.query_params.get("s")
        saved = load_choices(from_url) if is_token(from_url) else {}
        if saved:
            token = from_url
        else:
            token = new_token()
            # Saved with the choices from this run on (save_session), so the key is known from its first page.
            st.session_state[keys.LAB_ISSUED_AT] = int(time.time())
        st.session_state[keys.LAB_TOKEN] = token
        for key, value in saved.items():
            if persists(key):  # a file from an older Lab may hold keys that no longer persist
                st.session_state.setdefault(key, value)
        st.session_state[keys.LAB_SAVED_CHOICES] = saved
    if st.query_params.get("s") != session_token():
        st.query_params["s"] = session_token()


def save_session() -> None:
    """Write this session's choices where a reload finds them, when they changed since the last write."""
    from core.settings.choices import save_choices

    choices = _choices()
    if choices == st.session_state.get(keys.LAB_SAVED_CHOICES):
        return
    try:
        save_choices(session_token(), choices)
        st.session_state[keys.LAB_SAVED_CHOICES] = choices
    except OSError as exc:  # a full or read-only disk costs the reload memory, never the page
        logger.warning("could not save the session's choices: %s", exc)
