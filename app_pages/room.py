"""Room: every participant's trained models on this server side by side, refreshed live."""
import os
import time

import pandas as pd
import streamlit as st

from app_pages.parts import session_keys as keys
from app_pages.parts.common import public_text, runs_folder, session_token, show_error
from core.present.room import room_run_option, room_table
from core.runs import room
from core.settings.presets import active_preset
from core.training.board import Board

REFRESH_SECONDS = 3  # a new result reaches every open Room page this soon; a poll reads a few small files
PASSWORD_ENV = "LAB_ROOM_PASSWORD"
WRONG_PASSWORD_PAUSE_S = 1.0  # guessing the host's password costs a second a try


def room_password() -> str | None:
    """The host's password for clearing the room: the app's `room_password` secret, else LAB_ROOM_PASSWORD."""
    if st.secrets.load_if_toml_exists():
        secret = st.secrets.get("room_password")
        if isinstance(secret, str) and secret:
            return secret
    return os.environ.get(PASSWORD_ENV) or None


def save_name() -> None:
    try:
        st.session_state[keys.ROOM_NAME] = room.set_name(runs_folder(), session_token(), st.session_state[keys.ROOM_NAME])
    except OSError as exc:
        st.session_state[keys.ROOM_NAME_ERROR] = public_text(str(exc))


def try_on_predict(run_id: str) -> None:
    st.session_state[keys.PRED_MODEL_SOURCE] = "run"
    st.session_state[keys.PRED_RUN] = run_id
    st.switch_page("app_pages/predict.py")


def clear_room(rule: str, password: str | None) -> None:
    """Before the page draws, so that the table below is drawn already cleared."""
    if rule == room.OPEN or room.password_matches(password, st.session_state.get(keys.ROOM_CLEAR_PASSWORD)):
        try:
            room.clear(runs_folder())
            st.session_state[keys.ROOM_CLEARED] = "cleared"
        except OSError as exc:
            st.session_state[keys.ROOM_CLEARED] = public_text(str(exc))
    else:
        time.sleep(WRONG_PASSWORD_PAUSE_S)
        st.session_state[keys.ROOM_CLEARED] = "refused"
    st.session_state.pop(keys.ROOM_CLEAR_PASSWORD, None)


@st.fragment(run_every=REFRESH_SECONDS)
def live_room(runs_dir, me: str) -> None:
    try:
        room.record_running(runs_dir, Board(runs_dir).views(active_only=True))  # "Run both"'s first result
        rows = room.rows(runs_dir)
    except OSError as exc:
        show_error(exc)
        return
    if not rows:
        st.info("No models in the room yet. Train one on the Experiments page: it appears here the moment it "
                "is saved.", icon=":material/groups:")
        return
    people, models = len({r.owner for r in rows}), sum(len(r.runs) for r in rows)
    st.caption(f"{people} participant{'s' if people != 1 else ''}, {models} model{'s' if models != 1 else ''}. "
               "Accuracy on the validation images after the last epoch. Time: baseline / transfer model, "
               "its epochs and, for the transfer model, computing its backbone's features once.")
    table = pd.DataFrame(room_table(rows))
    table["Participant"] = [f"{r.name} (you)" if r.owner == me else r.name for r in rows]
    st.dataframe(table, hide_index=True)
    runs = {run.run_id: room_run_option(row, run) for row in rows for run in row.runs}
    picked = st.selectbox("Try a model on your own images", list(runs), format_func=runs.get, key=keys.ROOM_PICK)
    if st.button("Open it on Predict", icon=":material/image_search:", key=keys.ROOM_TRY, disabled=picked is None):
        try_on_predict(picked)


st.title("Room")
st.caption("Everyone using this Lab's server is in this room. Each model trained here from the dashboard is "
           "listed with its participant's name and figures (never the images), the baseline CNN beside the "
           "transfer model where one participant trained both on the same data.")

runs_dir, token = runs_folder(), session_token()
if keys.ROOM_NAME not in st.session_state:
    st.session_state[keys.ROOM_NAME] = room.name_of(runs_dir, token)
st.text_input("Your name in the room", key=keys.ROOM_NAME, max_chars=room.MAX_NAME_CHARS, on_change=save_name,
              placeholder="e.g. Ana, or a team name",
              help="Shown beside the models you train. Only this browser session can change it.")
if error := st.session_state.pop(keys.ROOM_NAME_ERROR, None):
    st.error(f"The name could not be saved: {error}", icon=":material/error:")

live_room(runs_dir, room.owner_key(token))

with st.expander("Clear the room", icon=":material/delete_sweep:"):
    preset, password = active_preset(), room_password()
    rule = room.clearing_rule(preset.name, password)
    st.caption("Clearing hides every model listed now, for a new group or a new exercise. Nobody's saved runs "
               "are deleted: they stay on Experiments and Predict.")
    if rule == room.CLOSED:
        st.info(f"On the {preset.name} preset only the host can clear the room, with a password, and none is "
                f"set: add `room_password` to the app's secrets or set {PASSWORD_ENV} on the server.",
                icon=":material/lock:")
    else:
        if rule == room.PASSWORD:
            st.text_input("Host password", type="password", key=keys.ROOM_CLEAR_PASSWORD)
        st.button("Clear the room", icon=":material/delete_sweep:", key=keys.ROOM_CLEAR, on_click=clear_room,
                  args=(rule, password))
        outcome = st.session_state.pop(keys.ROOM_CLEARED, None)
        if outcome == "cleared":
            st.success("The room is cleared.", icon=":material/check:")
        elif outcome == "refused":
            st.error("That is not the host's password.", icon=":material/lock:")
        elif outcome:
            st.error(f"The room could not be cleared: {outcome}", icon=":material/error:")
