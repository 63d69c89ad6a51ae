"""The dashboard's pages, run by st.navigation in streamlit_app.py, and their shared helpers.

Not named pages/: Streamlit treats a pages/ folder beside the entry script as a legacy multipage app, and
a first request for a deep link (say /predict) would then run that page without the entry script.
"""
