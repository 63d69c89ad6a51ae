"""Transfer Learning Lab: page config and navigation. Nothing heavy here: no TensorFlow import, so the
first paint is fast; each page imports what it needs when it runs."""
# Imported here, before any page runs, on purpose: plotly looks pandas up in sys.modules without importing
# it, so a chart built while another visitor's first page was still importing pandas met a half-initialised
# module ("partially initialized module 'pandas' has no attribute 'Series'") in a room of visitors.
import pandas  # noqa: F401
import streamlit as st

from app_pages.parts.common import sidebar, skip_keras_clear_session, tidy_runs_folder
from app_pages.parts.session import keep_widget_state, restore_session, save_session
from core.settings.processes import show_lab_messages

show_lab_messages()  # what the pages and the library log reaches the server's log
skip_keras_clear_session()
# An emoji favicon is drawn by the browser; a Material icon one is fetched from a font CDN (fails offline).
st.set_page_config(page_title="Transfer Learning Lab", page_icon="🧪", layout="wide",
                   initial_sidebar_state="auto")  # collapsed on phones

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", url_path="home", default=True),
    st.Page("app_pages/dataset.py", title="Dataset", icon=":material/photo_library:", url_path="dataset"),
    st.Page("app_pages/own_classes.py", title="Your classes", icon=":material/photo_camera:", url_path="your-classes"),
    st.Page("app_pages/experiments.py", title="Experiments", icon=":material/monitoring:", url_path="experiments"),
    st.Page("app_pages/data_efficiency.py", title="Data efficiency", icon=":material/stacked_line_chart:",
            url_path="data-efficiency"),
    st.Page("app_pages/predict.py", title="Predict", icon=":material/image_search:", url_path="predict"),
    st.Page("app_pages/room.py", title="Room", icon=":material/groups:", url_path="room"),
]

page = st.navigation(PAGES)
restore_session()  # this browser session's key and, on a reload, its saved choices
keep_widget_state()  # settings of pages not drawn in this run stay
save_session()  # a new session's key is known from its first run on, even if the page stops early
tidy_runs_folder()  # run folders a killed training left unfinished
sidebar()
page.run()
save_session()  # what this run changed (a loaded dataset, a preset), for the next reload
