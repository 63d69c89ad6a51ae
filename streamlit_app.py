"""Transfer Learning Lab: entry point. Page config and navigation only; no TensorFlow import here."""
import streamlit as st

st.set_page_config(page_title="Transfer Learning Lab", page_icon="🧪", layout="wide")
st.title("Transfer Learning Lab")
st.write("A baseline CNN against a frozen MobileNetV2 on cats vs dogs, reproduced live.")
