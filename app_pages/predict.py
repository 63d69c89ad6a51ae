"""Predict: reload a saved model from its .h5 file, as the article does, and classify images with it."""
import time
from pathlib import Path

import streamlit as st

from app_pages.common import chip, lab_owned_handle, runs_folder, show_error
from core.artifacts import list_runs
from core.charts import model_colour, model_kind, probability_bar
from core.config import MODEL_LABELS, ModelKind
from core.predict import PredictionError, predict_bytes

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif"]
DISPLAY_SIDE = 320
PER_ROW = 2


# A reloaded inference model is only read, so one copy per file version serves every session; the
# modification time in the key makes a retrained or replaced file load again.
@st.cache_resource(show_spinner=False, max_entries=3)
def load_cached(path: str, mtime: float, trusted: bool):
    from core.predict import load_for_prediction

    return load_for_prediction(path, allowed_handle=None if trusted else lab_owned_handle), time.time()


def best_transfer_index(runs) -> int:
    """The transfer run with the best final validation accuracy (the saved weights are the last epoch's)."""
    def score(record):
        acc = record.metrics.get("final_val_accuracy")
        return (record.model_kind == ModelKind.MOBILENET_V2.value, acc if isinstance(acc, (int, float)) else -1)

    return max(range(len(runs)), key=lambda i: score(runs[i])) if runs else 0


def run_option(record) -> str:
    kind = model_kind(record.model_kind)
    acc = record.metrics.get("final_val_accuracy")
    acc_text = f"val {acc:.1%}" if isinstance(acc, (int, float)) else "no val accuracy"
    when = time.strftime("%d %b %H:%M", time.localtime(record.metrics.get("finished_at", 0)))
    return f"{MODEL_LABELS.get(kind, record.model_kind)} · {when} · {acc_text} · {record.run_id}"


def thumbnail(data: bytes, name: str):
    from PIL import Image

    from core.images import decode_image

    image = Image.fromarray(decode_image(data, name, min_side=DISPLAY_SIDE))
    image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return image


st.title("Predict")
st.caption("The model is reloaded from its .h5 file with `load_model(path, custom_objects={'KerasLayer': "
           "hub.KerasLayer})`, exactly as the article does, then classifies the images you give it.")

choice = st.radio("Model", ["run", "path"], horizontal=True, key="pred_model_source",
                  format_func={"run": "A saved run", "path": "An .h5 file on this machine"}.get)
model_path, trusted, kind = None, False, None
if choice == "run":
    runs = list_runs(runs_folder()).runs
    if not runs:
        st.info("No finished runs yet: train a model on the Experiments page (or with the command line), or "
                "give the path of an .h5 file.", icon=":material/info:")
        st.stop()
    ids = [r.run_id for r in runs]
    by_id = {r.run_id: r for r in runs}
    if st.session_state.get("pred_run") not in by_id:
        st.session_state["pred_run"] = ids[best_transfer_index(runs)]
    run_id = st.selectbox("Saved run (the best transfer run is picked first)", ids, key="pred_run",
                          format_func=lambda i: run_option(by_id[i]))
    record = by_id[run_id]
    model_path, trusted, kind = record.model_path, True, model_kind(record.model_kind)
else:
    typed = st.text_input(".h5 file path", key="pred_h5_path", placeholder="runs/<run-id>/model.h5")
    if not typed.strip():
        st.info("Type the path of a Keras .h5 model file saved by the Lab or by the article's notebook.",
                icon=":material/info:")
        st.stop()
    model_path = Path(typed.strip()).expanduser()

try:
    mtime = model_path.stat().st_mtime
    started = time.time()
    with st.spinner(f"Reloading {model_path.name} ..."):
        loaded, loaded_at = load_cached(str(model_path), mtime, trusted)
except FileNotFoundError:
    st.error(f"'{model_path}' does not exist.", icon=":material/error:")
    st.stop()
except Exception as exc:  # noqa: BLE001 - a bad model file is one readable line, never a traceback
    show_error(exc)
    st.stop()

from_cache = loaded_at < started
with st.container(border=True):
    info, timing = st.columns([3, 2])
    label = chip(kind) if kind else f"**{model_path.name}**"
    info.markdown(f"{label} &nbsp; classes: {', '.join(loaded.class_names)} · input "
                  f"{loaded.image_size}x{loaded.image_size}", unsafe_allow_html=True)
    timing.markdown(
        f":material/bolt: Reused from the shared cache (the first load took {loaded.load_seconds:.2f} s)" if from_cache
        else f":material/hard_drive: Loaded from disk in {loaded.load_seconds:.2f} s")

uploads = st.file_uploader("Images (jpg, png, webp, bmp, gif); several at once is fine", type=UPLOAD_TYPES,
                           accept_multiple_files=True, key="up_images")
files = [(f.name, f.getvalue()) for f in uploads or []]
if st.toggle("Take a photo with the camera", key="pred_camera"):
    photo = st.camera_input("Camera", key="up_camera", label_visibility="collapsed")
    if photo is not None:
        files.append(("camera photo", photo.getvalue()))
if not files:
    st.caption("Upload images or take a photo to see what the model thinks.")
    st.stop()

with st.spinner(f"Classifying {len(files)} image(s) ..."):
    results = predict_bytes(loaded, files)
failed = [r for r in results if isinstance(r, PredictionError)]
for r in failed:
    st.error(r.message, icon=":material/broken_image:")
good = [(r, data) for r, (_, data) in zip(results, files) if not isinstance(r, PredictionError)]
if good:
    st.caption(f"{len(good)} image(s) classified" + (f", {len(failed)} could not be read." if failed else "."))
colour = model_colour(kind) if kind else None
for start in range(0, len(good), PER_ROW):
    row = enumerate(good[start:start + PER_ROW], start)
    for column, (index, (result, data)) in zip(st.columns(PER_ROW, gap="medium"), row):
        with column, st.container(border=True):
            picture, verdict = st.columns([1, 1.3], vertical_alignment="center")
            picture.image(thumbnail(data, result.name), caption=result.name, width="stretch")
            verdict.markdown(f"### {result.label}")
            verdict.caption(f"{result.confidence:.1%} confident")
            verdict.plotly_chart(probability_bar(result.probabilities, colour), key=f"prob_{index}")
