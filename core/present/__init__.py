"""Presentation: plotly figures and text formatting shared by the dashboard and the CLI (no Streamlit here)."""
