"""Predict: reload a saved model from its .h5 file, as the article does, and classify images with it."""
import logging
import time
from pathlib import Path

import streamlit as st

from app_pages.parts import session_keys as keys
from app_pages.parts.common import (
    SOURCE_KEY,
    chip,
    current_classes,
    current_source,
    others_imports,
    public_text,
    runs_folder,
    show_error,
)
from core.data.images import MAX_BYTES
from core.present.charts import model_colour, model_kind, probability_bar
from core.runs.explain import GRAD_CAM, OCCLUSION
from core.runs.folders import list_runs, matches_dataset, preferred_run_index
from core.runs.predict import PredictionError, predict_bytes, typed_class_names
from core.safety.model_files import MAX_UPLOAD_BYTES, numbered_classes
from core.settings.presets import active_preset
from core.settings.text import class_list, dataset_name, markdown_literal

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif"]
DISPLAY_SIDE = 320
PER_ROW = 2
logger = logging.getLogger("app_pages.predict")  # a page runs as __main__
# The server's part of a prediction, for its log: a person's wait also holds the upload and the browser's drawing.
page_began = time.monotonic()
MODEL_SOURCES = {"run": "A saved run", "upload": "Upload an .h5 file", "path": "An .h5 file on this machine"}


# A reloaded inference model is only read, so one copy per file version serves every session; the
# modification time in the key makes a retrained or replaced file load again.
# An uploaded file is a stranger's: its hub handle may only name downloads and the Lab's own folders.
@st.cache_resource(show_spinner=False, max_entries=3)
def load_cached(path: str, mtime: float, trusted: bool, name: str | None = None):
    from core.models.hub import web_upload_handle_allowed
    from core.runs.predict import load_for_prediction

    policy = None if trusted else web_upload_handle_allowed
    return load_for_prediction(path, allowed_handle=policy, name=name), time.time()


# A frozen transfer model (every own-classes model of a workshop room) is its Dense layer on the process's
# one copy of its hub module: small, so a whole room's models stay cached. None for any other model.
@st.cache_resource(show_spinner=False, max_entries=64)
def load_head_cached(path: str, mtime: float, trusted: bool, name: str | None = None):
    from core.models.hub import web_upload_handle_allowed
    from core.runs.predict import load_with_shared_backbone

    policy = None if trusted else web_upload_handle_allowed
    return load_with_shared_backbone(path, allowed_handle=policy, name=name), time.time()


def stored_upload(upload) -> Path:
    """Where this session's uploaded model was kept; checked and written once per upload, not per rerun."""
    from core.safety.model_files import store_uploaded_model

    kept = st.session_state.get(keys.UP_MODEL_STORED)
    if kept and kept[0] == upload.file_id and kept[1].is_file():
        return kept[1]
    with st.spinner(f"Checking {markdown_literal(upload.name)} ..."):
        path = store_uploaded_model(upload, upload.name)
    st.session_state[keys.UP_MODEL_STORED] = (upload.file_id, path)
    return path


def run_option(record) -> str:
    """Model, dataset and classes, accuracy, time: enough to tell a shapes model from a faces model."""
    acc = record.metrics.get("final_val_accuracy")
    acc_text = f"val {acc:.1%}" if isinstance(acc, (int, float)) else "no val accuracy"
    finished = record.metrics.get("finished_at", 0)
    try:
        when = time.strftime("%d %b %H:%M", time.localtime(finished))
    except (OverflowError, OSError, ValueError, TypeError):  # an imported run's timestamp may be anything
        when = "unknown time"
    data = dataset_name(record.source) if record.source else "unknown dataset"
    return (f"{record.model_name} · {data} ({class_list(record.class_names)}) · "
            f"{acc_text} · {when} · {record.run_id}")


def dataset_mismatch(model_classes: list[str], record, dataset_classes: list[str] | None) -> str | None:
    """A warning (markdown, names escaped) when the model cannot answer in the current dataset's terms;
    None until the session has chosen a dataset (someone who only came to predict has none)."""
    if SOURCE_KEY not in st.session_state:
        return None
    source = current_source()
    ours, theirs = markdown_literal(class_list(model_classes, 6)), markdown_literal(dataset_name(source))
    if dataset_classes is not None and list(model_classes) != list(dataset_classes):
        return (f"This model's classes ({ours}) are not those of the current dataset, {theirs} "
                f"({markdown_literal(class_list(dataset_classes, 6))}): it can only answer with its own classes. "
                "Pick a run trained on the current dataset, or train one on Experiments.")
    if dataset_classes is None and record is not None and not matches_dataset(record, source):
        trained = markdown_literal(dataset_name(record.source)) if record.source else "another dataset"
        return (f"This run was trained on {trained}, not on the current dataset ({theirs}): its answers are "
                f"among its own classes ({ours}).")
    return None


def thumbnail(data: bytes, name: str):
    from PIL import Image

    from core.data.images import decode_image

    image = Image.fromarray(decode_image(data, name, min_side=DISPLAY_SIDE))
    image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return image


# What the heatmap's colours mean, per method; {name} is the explained class.
EXPLAIN_LEGENDS = {
    OCCLUSION: "Red: hiding this part under a grey patch lowers the model's confidence in '{name}' the most, so "
               "the prediction rests on it. Blue: hiding it changes little.",
    GRAD_CAM: "Red: the last convolution layer's features here count most towards '{name}'. Blue: they count "
              "little.",
}
EXPLANATIONS_KEY = "explanations"  # this session's heatmaps by (model file, version, image, method)
MAX_EXPLANATIONS = 8  # oldest dropped first: each holds a figure with the image in it


def explain_image(loaded, data: bytes, name: str, method: str):
    """(figure, legend) for one image, legend None for a flat map; a progress bar appears once it takes
    more than a second. Only the figure is kept, not the full-size arrays behind it."""
    from core.data.images import decode_image
    from core.present.evaluation_charts import heatmap_overlay_figure
    from core.runs.explain import explain

    image = decode_image(data, name, min_side=loaded.image_size)  # the pixels the prediction used
    started, bar = time.monotonic(), None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None and time.monotonic() - started > 1.0:
            bar = st.progress(0.0)
        if bar is not None:
            bar.progress(min(1.0, done / max(total, 1)), text=f"Explaining: {done} of {total} steps")

    try:
        explanation = explain(loaded, image, method, progress=progress)
    finally:
        if bar is not None:
            bar.empty()
    legend = EXPLAIN_LEGENDS[method].format(name=markdown_literal(explanation.class_name)) if explanation.peak else None
    return heatmap_overlay_figure(image, explanation), legend


def explain_controls(index: int, loaded, name: str, data: bytes, model_key: tuple) -> None:
    """Method choice and an Explain button under a prediction; the heatmap once asked for."""
    import hashlib

    from core.runs.explain import METHOD_LABELS, available_methods

    methods = available_methods(loaded)
    how, ask = st.columns([3, 1], vertical_alignment="bottom")
    if len(methods) > 1:
        method = how.radio("Explanation", methods, format_func=METHOD_LABELS.get, horizontal=True,
                           key=f"pred_method_{index}")
    else:
        method = methods[0]
        how.caption(f"Explanation: {METHOD_LABELS[method]}", help="Grad-CAM needs a convolution layer the Lab can "
                    "reach, and this model has none (a hub module hides its insides).")
    store = st.session_state.setdefault(EXPLANATIONS_KEY, {})
    key = (*model_key, hashlib.sha256(data).hexdigest(), method)
    if ask.button("Explain", key=f"explain_{index}", icon=":material/insights:", width="stretch",
                  help="Which parts of the image the prediction depends on.") and key not in store:
        try:
            store[key] = explain_image(loaded, data, name, method)
        except Exception as exc:
            show_error(exc, prefix="No explanation: ")
            return
        while len(store) > MAX_EXPLANATIONS:
            store.pop(next(iter(store)))
    if key not in store:
        return
    figure, legend = store[key]
    if legend is None:
        st.info("No part of the image changed the prediction: the map is flat.", icon=":material/info:")
        return
    st.plotly_chart(figure, key=f"explanation_{index}")
    st.caption(legend)


st.title("Predict")
st.caption("The model is reloaded from its .h5 file with `load_model(path, custom_objects={'KerasLayer': "
           "hub.KerasLayer})`, as the article does, then classifies the images you give it. A frozen transfer "
           "model whose backbone is its hub module's own runs on the server's one copy of that module instead; "
           "its card says so.")

# A public host must not let visitors name files on the server: uploads only there.
sources = [s for s in MODEL_SOURCES if s != "path" or active_preset().allow_local_paths]
if st.session_state.get("pred_model_source") not in sources:
    st.session_state["pred_model_source"] = "run"
choice = st.radio("Model", sources, horizontal=True, key="pred_model_source", format_func=MODEL_SOURCES.get)
model_path, trusted, kind, shown_name, record, run_model_name = None, False, None, None, None, None
dataset_classes = current_classes()
if choice == "run":
    runs = list_runs(runs_folder()).runs
    if not runs:
        st.info("No finished runs yet: train a model on the Experiments page (or with the command line), or "
                "upload an .h5 file.", icon=":material/info:")
        st.stop()
    ids = [r.run_id for r in runs]
    by_id = {r.run_id: r for r in runs}
    if st.session_state.get("pred_run") not in by_id:
        # Runs other visitors imported are never the default: each visitor picks one of those deliberately.
        others = others_imports()
        candidates = [r for r in runs if r.run_id not in others]
        st.session_state["pred_run"] = (
            candidates[preferred_run_index(candidates, current_source(), dataset_classes)].run_id if candidates
            else None)
    run_id = st.selectbox("Saved run (one trained on the current dataset is picked first)", ids, key="pred_run",
                          format_func=lambda i: run_option(by_id[i]), placeholder="Choose a saved run")
    if run_id is None:
        st.info("Choose a saved run to predict with: the runs here were imported by other visitors.",
                icon=":material/info:")
        st.stop()
    record = by_id[run_id]
    model_path, trusted, kind = record.model_path, True, model_kind(record.model_kind)
    run_model_name = record.model_name
elif choice == "upload":
    limit_mb = max(1, MAX_UPLOAD_BYTES // 10**6)  # the browser refuses bigger files; core checks again
    upload = st.file_uploader(f"A Keras .h5 model (up to {limit_mb} MB)", type=["h5"], key="up_model",
                              max_upload_size=limit_mb)
    if upload is None:
        st.info("Upload a Keras .h5 model file saved by the Lab or by the article's notebook. Layers that run "
                "stored code (Lambda, custom layers) are refused before anything is loaded.",
                icon=":material/info:")
        st.stop()
    try:
        model_path, shown_name = stored_upload(upload), upload.name
    except Exception as exc:
        show_error(exc)
        st.stop()
else:
    typed = st.text_input(".h5 file path", key="pred_h5_path", placeholder="runs/<run-id>/model.h5")
    if not typed.strip():
        st.info("Type the path of a Keras .h5 model file saved by the Lab or by the article's notebook.",
                icon=":material/info:")
        st.stop()
    # Someone who can type server paths runs the Lab locally: the file's hub handle may be any folder.
    model_path, trusted = Path(typed.strip()).expanduser(), True

try:
    mtime = model_path.stat().st_mtime
    started = time.time()
    with st.spinner(f"Reloading {markdown_literal(shown_name or model_path.name)} ..."):
        loaded, loaded_at = load_head_cached(str(model_path), mtime, trusted, shown_name)
        if loaded is None:
            loaded, loaded_at = load_cached(str(model_path), mtime, trusted, shown_name)
except FileNotFoundError:
    st.error(public_text(f"'{model_path}' does not exist."), icon=":material/error:")
    st.stop()
except Exception as exc:
    show_error(exc)
    st.stop()

from_cache = loaded_at < started
# A file without class names (the article's notebook saves none) has numbered classes; the visitor may name
# them in a field under the model's card, read here so that the card already shows them.
count = len(loaded.class_names)
unnamed = loaded.class_names == numbered_classes(count)
class_names, names_problem = None, None
if unnamed and str(st.session_state.get(keys.PRED_CLASS_NAMES) or "").strip():
    try:
        class_names = typed_class_names(st.session_state[keys.PRED_CLASS_NAMES], count)
    except ValueError as exc:
        names_problem = str(exc)
with st.container(border=True):
    info, timing = st.columns([3, 2])
    label = ""
    if kind:
        # The Lab's own colour and label, nothing from the file; the run's model name below it as text.
        info.markdown(chip(kind), unsafe_allow_html=True)
        if run_model_name:
            info.text(run_model_name)
    else:
        label = f"**{markdown_literal(shown_name or model_path.name)}** · "
    trained_on = f"trained on {markdown_literal(dataset_name(record.source))} · " if record and record.source else ""
    named = " (named here)" if class_names else ""
    info.markdown(f"{label}{trained_on}classes: {markdown_literal(', '.join(class_names or loaded.class_names))}"
                  f"{named} · input {loaded.image_size}x{loaded.image_size}")
    timing.markdown(
        f":material/bolt: Reused from the shared cache (the first load took {loaded.load_seconds:.2f} s)" if from_cache
        else f":material/hard_drive: Loaded from disk in {loaded.load_seconds:.2f} s")
    if loaded.backbone is not None:
        timing.caption("Its frozen backbone is the hub module's own, so it runs on the server's one copy of "
                       "that module; its Dense layer is read from the file. Same outputs as the whole model.")

if unnamed:
    st.text_input(
        "Names of its classes, in the model's output order", key=keys.PRED_CLASS_NAMES,
        placeholder=", ".join(dataset_classes) if dataset_classes and len(dataset_classes) == count else
        "cat, dog" if count == 2 else ", ".join(f"name {i}" for i in range(min(count, 4))),
        help="This file stores no class names, so its classes are numbered. The article's cats_vs_dogs model "
             "outputs cat, then dog (TFDS's label order). Names typed here are used on this page only.")
    if names_problem:
        st.warning(names_problem, icon=":material/edit:")

mismatch = dataset_mismatch(class_names or loaded.class_names, record, dataset_classes)
if mismatch:
    st.warning(mismatch, icon=":material/warning:")

# The camera comes first: on a phone it is the usual way in, and the verdict follows right under it.
files = []
if st.toggle("Take a photo with the camera", key="pred_camera"):
    photo = st.camera_input("Camera", key="up_camera", label_visibility="collapsed")
    if photo is not None:
        files.append(("camera photo", photo.getvalue()))
# The uploader says the same limit the image checks apply (core.data.images.MAX_BYTES), not the server's.
uploads = st.file_uploader("Images (jpg, png, webp, bmp, gif); several at once is fine", type=UPLOAD_TYPES,
                           accept_multiple_files=True, key="up_images", max_upload_size=MAX_BYTES // 2**20)
files += [(f.name, f.getvalue()) for f in uploads or []]
if not files:
    st.caption("Upload images or take a photo to see what the model thinks.")
    st.stop()

with st.spinner(f"Classifying {len(files)} image(s) ..."):
    classify_began = time.monotonic()
    results = predict_bytes(loaded, files, class_names)
    classify_s = time.monotonic() - classify_began
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
            # The verdict first: where columns stack (a phone), it then shows before the picture.
            verdict, picture = st.columns([1.3, 1], vertical_alignment="center")
            picture.image(thumbnail(data, result.name), caption=result.name, width="stretch")
            verdict.markdown(f"### {markdown_literal(result.label)}")
            verdict.caption(f"{result.confidence:.1%} confident")
            # No toolbar: on a bar this short it covers the bars themselves.
            verdict.plotly_chart(probability_bar(result.probabilities, colour), key=f"prob_{index}",
                                 config={"displayModeBar": False})
            explain_controls(index, loaded, result.name, data, (str(model_path), mtime))
logger.info("Predict: %d image(s) classified in %.2f s, the page drawn in %.2f s",
            len(good), classify_s, time.monotonic() - page_began)
