"""Your classes: name 2-6 classes, fill them from a phone's camera or uploads, train, then try the model."""
import logging
import time

import streamlit as st

from app_pages.parts import session_keys as keys
from app_pages.parts.common import chip, current_handle, current_source, session_token, set_source, warm_predict
from app_pages.parts.training_panel import board, running_now, submit
from core.data import own_classes as own
from core.data.images import MAX_BYTES
from core.settings.errors import LabError
from core.settings.source import Source
from core.settings.text import markdown_literal, megabytes, percent

logger = logging.getLogger("app_pages.own_classes")  # a page runs as __main__

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif"]
SHOWN_ERRORS = 3
THUMB_WIDTH = 72


def flash(level: str, text: str) -> None:
    st.session_state.setdefault(keys.OWN_FLASH, []).append((level, text))


def add_files(store, class_name: str, files: list[tuple[str, str, bytes]]) -> None:
    """Add (file id, name, bytes) once each; one line for what was added, one per refusal (a few at most)."""
    seen = st.session_state.setdefault(keys.OWN_SEEN, set())
    added, errors = 0, []
    for file_id, name, data in files:
        if file_id in seen:
            continue
        seen.add(file_id)
        try:
            store.add_image(class_name, data, name)
            added += 1
        except LabError as exc:
            errors.append(str(exc))
        except Exception as exc:  # a full disk, a vanished folder: one line, the log has the rest
            logger.exception("adding an image to own classes failed")
            errors.append(f"{name} was not added ({exc.__class__.__name__}).")
    if added:
        flash("success", f"Added {added} image{'s' if added > 1 else ''} to {markdown_literal(class_name)}.")
    for text in errors[:SHOWN_ERRORS]:
        flash("error", markdown_literal(text))
    if len(errors) > SHOWN_ERRORS:
        flash("error", f"... and {len(errors) - SHOWN_ERRORS} more not added.")


def act(action, *args) -> None:
    """A button's change to the store, its refusal shown on the next run."""
    try:
        action(*args)
    except LabError as exc:
        flash("error", markdown_literal(str(exc)))


def add_class() -> None:
    name = st.session_state.get(keys.OWN_NEW_NAME, "")
    try:
        st.session_state[keys.OWN_CLASS] = store.add_class(name)
        st.session_state[keys.OWN_NEW_NAME] = ""
    except LabError as exc:
        flash("error", markdown_literal(str(exc)))


def rename_class(old: str) -> None:
    try:
        st.session_state[keys.OWN_CLASS] = store.rename_class(old, st.session_state.get(keys.OWN_RENAME, ""))
    except LabError as exc:
        flash("error", markdown_literal(str(exc)))


def use_classes() -> str | None:
    """Make a frozen copy of the classes the current dataset; its source, or None (the refusal flashed)."""
    try:
        source = str(Source.folder(store.frozen_set()))
    except LabError as exc:
        flash("error", markdown_literal(str(exc)))
        return None
    set_source(source)
    st.session_state[keys.DS_LOADED] = source
    return source


def train() -> None:
    """Queue the transfer head on cached features (and the CNN from scratch after it, if asked) as one job."""
    from core.training.jobs import Experiment

    source = use_classes()
    if source is None:
        return
    try:
        images = own.training_images([c.count for c in store.classes()])
        pairs = own.training_configs(source, current_handle(), images, st.session_state.get(keys.OWN_WITH_BASELINE, False))
        # A class holds at most MAX_IMAGES_PER_CLASS images: the job is short whatever the host's cap on a
        # training's length, so no estimate is timed first (that would cost a process and seconds).
        submission = submit([Experiment(data, cfg) for data, cfg in pairs], session_token(), short=True)
    except LabError as exc:
        flash("error", markdown_literal(str(exc)))
        return
    except Exception as exc:
        logger.exception("queueing a training of own classes failed")
        flash("error", f"The training could not be queued ({exc.__class__.__name__}); the server log has the details.")
        return
    warm_predict(pairs[0][1].handle, pairs[0][0].image_size)  # Try it follows the transfer model's result
    st.session_state[keys.EXP_OWN_JOB] = submission.job_id
    st.session_state[keys.EXP_OWN_REUSED] = [path.name for _, path in sorted(submission.reused.items())]
    st.session_state[keys.OWN_STARTED] = time.time()


def try_it(run_id: str) -> None:
    st.session_state[keys.PRED_MODEL_SOURCE] = "run"
    st.session_state[keys.PRED_RUN] = run_id
    st.session_state[keys.PRED_CAMERA] = True  # the camera first, as on this page


def verdict() -> None:
    """The latest training's validation accuracy per model, and Try it for the first (the transfer model)."""
    from core.runs.folders import open_run
    from core.settings.paths import runs_dir

    job_id = st.session_state.get(keys.EXP_OWN_JOB)
    names = list(st.session_state.get(keys.EXP_OWN_REUSED, []))
    view = board().view(job_id) if job_id else None
    if view is not None and view.finished:
        names += [p.name for p in view.snapshot.run_dirs]
    elif view is not None:
        return  # still training: the panel above shows it
    records = []
    for name in names:
        try:
            records.append(open_run(runs_dir() / name))
        except (LabError, OSError):
            continue
    if not records:
        return
    with st.container(border=True):
        st.markdown("##### Result")
        for record in records:
            acc = record.metrics.get("final_val_accuracy")
            counts = (record.config.get("dataset") or {}).get("counts") or {}
            try:
                n_val = sum(counts.get("validation", {}).values())
            except (AttributeError, TypeError):  # a run folder written elsewhere: no count to give
                n_val = None
            on = f" on {n_val} held-out images" if n_val else " on the held-out images"
            st.markdown(f"{chip(record.model_kind)}: validation accuracy **{percent(acc)}**{on}",
                        unsafe_allow_html=True)
        started = st.session_state.get(keys.OWN_STARTED)
        if started and view is not None:
            st.caption(f"Trained in {view.snapshot.elapsed_seconds:.0f} s.")
        if st.button("Try it", type="primary", icon=":material/photo_camera:", on_click=try_it,
                     args=(records[0].run_id,), key=keys.OWN_TRY):
            st.switch_page("app_pages/predict.py")


def thumbnails(store, chosen) -> None:
    grid = st.container(horizontal=True, gap="small")
    for image in chosen.images:
        with grid.container(width=THUMB_WIDTH, gap=None):
            if image.thumbnail.is_file():
                st.image(str(image.thumbnail), width=THUMB_WIDTH)
            st.button("Remove", key=keys.OWN_REMOVE.key(image.image_id), icon=":material/delete:", type="tertiary",
                      on_click=act, args=(store.remove_image, chosen.name, image.image_id),
                      help="Remove this image")


st.title("Your classes")
st.caption("Teach the Lab your own classes: name two to six, show each one to the camera (or upload photos), "
           "then train. Your images stay on this server for your session only; nobody else sees them.")

own.prune_if_due()
store = own.store_for(session_token())
store.touch()
for level, text in st.session_state.pop(keys.OWN_FLASH, []):
    getattr(st, level)(text)

classes = store.classes()
names = [c.name for c in classes]
if names:
    if st.session_state.get(keys.OWN_CLASS) not in names:
        st.session_state[keys.OWN_CLASS] = names[0]
    chosen_name = st.segmented_control("Class", names, key=keys.OWN_CLASS, required=True, format_func=markdown_literal)
    chosen = next(c for c in classes if c.name == chosen_name)

    round_ = st.session_state.setdefault(keys.OWN_CAMERA_ROUND, 0)
    photo = st.camera_input(f"Show **{markdown_literal(chosen.name)}** to the camera", key=keys.OWN_CAMERA.key(round_))
    if photo is not None:
        add_files(store, chosen.name, [(photo.file_id, f"photo {chosen.count + 1}", photo.getvalue())])
        st.session_state[keys.OWN_CAMERA_ROUND] = round_ + 1  # a fresh camera, ready for the next snapshot
        st.rerun()
    up_round = st.session_state.setdefault(keys.OWN_UPLOAD_ROUND, 0)
    uploads = st.file_uploader(f"Or upload images of {markdown_literal(chosen.name)}", type=UPLOAD_TYPES,
                               accept_multiple_files=True, key=keys.OWN_UPLOAD.key(up_round),
                               max_upload_size=MAX_BYTES // 2**20)  # the image checks' own limit
    if uploads:
        add_files(store, chosen.name, [(f.file_id, f.name, f.getvalue()) for f in uploads])
        st.session_state[keys.OWN_UPLOAD_ROUND] = up_round + 1
        st.rerun()

    st.markdown(f"**{markdown_literal(chosen.name)}**: {chosen.count} of {own.MAX_IMAGES_PER_CLASS} images")
    if chosen.count < own.SUGGESTED_IMAGES:
        st.caption(f"At least {own.SUGGESTED_IMAGES} are needed for a fair check: "
                   f"{own.validation_images(own.SUGGESTED_IMAGES)} of them are held out (see below).")
    thumbnails(store, chosen)
    with st.expander("Rename or remove this class"):
        st.text_input("New name", value=chosen.name, max_chars=own.MAX_NAME_CHARS, key=keys.OWN_RENAME)
        a, b = st.columns(2)
        a.button("Rename", on_click=rename_class, args=(chosen.name,), width="stretch", icon=":material/edit:")
        b.button(f"Remove {chosen.count} image{'' if chosen.count == 1 else 's'} and the class", width="stretch",
                 on_click=act, args=(store.remove_class, chosen.name), icon=":material/delete:")
else:
    st.info("Start by naming your first class, e.g. the object in your hand; then a second one.",
            icon=":material/label:")

if len(names) < own.MAX_CLASSES:
    with st.form(keys.OWN_ADD_CLASS_FORM, clear_on_submit=False, border=False):
        field, add = st.columns([3, 1], vertical_alignment="bottom")
        field.text_input("New class", key=keys.OWN_NEW_NAME, max_chars=own.MAX_NAME_CHARS,
                         placeholder="e.g. mug, pen, keys")
        add.form_submit_button("Add class", icon=":material/add:", on_click=add_class, width="stretch")

held = own.validation_images(own.SUGGESTED_IMAGES)
st.caption(f"Each class needs at least {own.SUGGESTED_IMAGES} images: {held} of them are held out to check the model "
           f"(20% of each class, as for every folder dataset) and {own.SUGGESTED_IMAGES - held} are learnt from. "
           f"Vary the angle, distance and background, or the model learns those instead of the object. At most "
           f"{own.MAX_IMAGES_PER_CLASS} a class, {own.MAX_CLASSES} classes, {megabytes(own.MAX_SESSION_BYTES)} "
           f"in all (now {megabytes(store.total_bytes())}); unused for {own.IDLE_SECONDS // 3600} hours, they are "
           "removed.")

if len(names) >= own.MIN_CLASSES:
    st.divider()
    problems = store.problems()
    for problem in problems:
        st.caption(f":material/info: {markdown_literal(problem)}")
    busy = any(v.active and v.job_id == st.session_state.get(keys.EXP_OWN_JOB) for v in board().active())
    st.checkbox("Also train the CNN from scratch, for comparison", key=keys.OWN_WITH_BASELINE,
                help="Trained after the transfer model, on the same images: slower, and usually far less accurate "
                     "with this few images.")
    train_col, use_col = st.columns(2)
    train_col.button("Train", type="primary", icon=":material/play_arrow:", on_click=train, width="stretch",
                     disabled=bool(problems) or busy,
                     help="The pretrained backbone's features of every image, then a small classifier on them: "
                          "seconds on a small set.")
    use = use_col.button("Use these classes", icon=":material/check_circle:", disabled=bool(problems), width="stretch",
                         help="Makes them the current dataset of Experiments, Data efficiency and Predict.")
    if use and use_classes():
        st.rerun()  # the sidebar names the new dataset
    shown = Source.parse(current_source())
    in_use = shown.is_folder and shown.value.startswith(str(store.folder))
    if in_use:
        st.caption(":material/check: The current dataset is a copy of your classes; after changing them, press "
                   "**Use these classes** (or Train) again.")
    st.download_button("Download as a zip", data=store.zip_bytes, file_name="my-classes.zip", mime="application/zip",
                       icon=":material/download:", on_click="ignore", disabled=not any(c.count for c in classes),
                       help="One folder per class: the format the Dataset page imports.")
    running_now()
    verdict()
