"""Experiments: both models configured side by side, estimated, trained in the background, compared."""
import dataclasses
import logging
import time

import streamlit as st

from app_pages.common import (
    HANDLE_FIELD_KEY,
    chip,
    current_handle,
    current_source,
    describe_source,
    open_source_cached,
    runs_folder,
    show_error,
)
from app_pages.run_details import EXPORT_GUIDE, show_evaluation, show_exports
from core.models.hub import check_web_handle
from core.present.charts import CurveSeries, model_kind, training_curves
from core.runs.folders import list_runs
from core.settings.config import (
    ARTICLE_BATCH_SIZE,
    ARTICLE_EPOCHS,
    ARTICLE_IMAGE_SIZE,
    ARTICLE_LEARNING_RATE,
    MODEL_LABELS,
    DataConfig,
    ModelKind,
    TrainConfig,
    uses_feature_cache,
    validate,
)
from core.settings.errors import LabError, OfflineError
from core.settings.presets import active_preset, apply_preset, capped_batch_size
from core.settings.text import duration as format_duration
from core.training.estimate import Estimate, estimate, quick_demo, split_sizes
from core.training.jobs import DONE, FAILED, Experiment, Job

logger = logging.getLogger(__name__)

JOB_KEY = "exp_job"
COLLECTED_KEY = "exp_collected"  # the finished job whose runs were put on the charts already
SHOWN_KEY = "exp_shown"  # run ids on the charts
NOTICE_KEY = "exp_notice"  # (level, text) left by a preset button for the next run to show
SIZE_KEY, BUDGET_KEY = "exp_image_size", "exp_budget_min"
PREFIX = {ModelKind.BASELINE: "exp_b_", ModelKind.MOBILENET_V2: "exp_t_"}
HANDLE_FIELD, CACHE_FIELD = HANDLE_FIELD_KEY, "exp_t_cache"
FINE_EPOCHS_FIELD, FINE_LR_FIELD = "exp_t_ft_epochs", "exp_t_ft_lr"
KINDS = (ModelKind.BASELINE, ModelKind.MOBILENET_V2)  # the article's order, also for "Run both"


def article_settings(kind: ModelKind) -> dict:
    # The article neither augments nor fine-tunes.
    # The batch is the article's unless the preset caps it lower (memory on a small shared host).
    settings = {"epochs": ARTICLE_EPOCHS[kind], "batch": capped_batch_size(ARTICLE_BATCH_SIZE),
                "lr": ARTICLE_LEARNING_RATE, "limit": 0, "augment": False}
    if kind is ModelKind.MOBILENET_V2:
        settings |= {"ft_epochs": 0, "ft_lr": TrainConfig.fine_tune_learning_rate}
    return settings


def init_state() -> None:
    for kind, prefix in PREFIX.items():
        for name, value in article_settings(kind).items():
            st.session_state.setdefault(prefix + name, value)
    st.session_state.setdefault(SIZE_KEY, ARTICLE_IMAGE_SIZE)
    st.session_state.setdefault(BUDGET_KEY, 3.0)
    st.session_state.setdefault(HANDLE_FIELD, current_handle())
    st.session_state.setdefault(CACHE_FIELD, True)
    st.session_state.setdefault("exp_show_article", True)
    st.session_state.setdefault("exp_show_reference", True)


def configs(kind: ModelKind) -> tuple[DataConfig, TrainConfig]:
    s, p = st.session_state, PREFIX[kind]
    data = DataConfig(source=current_source(), image_size=int(s[SIZE_KEY]), batch_size=int(s[p + "batch"]),
                      limit=int(s[p + "limit"]) or None, augment=bool(s[p + "augment"]))
    transfer = kind is ModelKind.MOBILENET_V2
    train = TrainConfig(model=kind, epochs=int(s[p + "epochs"]), learning_rate=float(s[p + "lr"]),
                        handle=s[HANDLE_FIELD].strip(), cache_features=bool(s[CACHE_FIELD]),
                        fine_tune_epochs=int(s[FINE_EPOCHS_FIELD]) if transfer else 0,
                        fine_tune_learning_rate=float(s[FINE_LR_FIELD]))
    if kind is ModelKind.MOBILENET_V2 and not active_preset().allow_local_paths:
        check_web_handle(train.handle)  # the handle field must not name the server's own folders
    # The preset's caps (images, batch, image size, server folders) apply to estimates and runs alike.
    return apply_preset(data, train), train


# Timing the model is the same work for every session on this machine, so the result is shared.
@st.cache_data(show_spinner=False, max_entries=32)
def model_speed(kind_value: str, image_size: int, batch_size: int, handle: str, num_classes: int):
    from core.training.estimate import measure_speed

    return measure_speed(ModelKind(kind_value), image_size, batch_size, handle, num_classes)


@st.cache_data(show_spinner=False, max_entries=16)
def decode_speed(source: str, image_size: int, batch_size: int) -> float:
    from core.training.estimate import measure_decode

    return measure_decode(open_source_cached(source), image_size, batch_size)


def available(source: str) -> tuple[int, int, int]:
    """(training images, validation images, classes) of the whole source."""
    info = open_source_cached(source).info
    return info.split_size("train"), info.split_size("validation"), info.num_classes


@st.cache_data(show_spinner=False, max_entries=16)
def fine_tune_speed(image_size: int, batch_size: int, handle: str, num_classes: int) -> tuple[float, float]:
    from core.training.estimate import measure_fine_tune

    return measure_fine_tune(image_size, batch_size, handle, num_classes)


def speed_with_decode(kind: ModelKind, data: DataConfig, train: TrainConfig, num_classes: int):
    speed = model_speed(kind.value, data.image_size, data.batch_size, train.handle, num_classes)
    speed = dataclasses.replace(speed, decode=decode_speed(data.source, data.image_size, data.batch_size))
    if train.fine_tune_epochs:
        # Timed only when asked for: a step through the unfrozen backbone is the slowest thing to time.
        per_image, setup = fine_tune_speed(data.image_size, data.batch_size, train.handle, num_classes)
        speed = dataclasses.replace(speed, fine_tune=per_image, fine_tune_setup=setup)
    return speed


def run_estimate(kind: ModelKind) -> Estimate:
    data, train = configs(kind)
    validate(data, train)
    n_train, n_val, classes = available(data.source)
    speed = speed_with_decode(kind, data, train, classes)
    used_train, used_val = split_sizes(n_train, n_val, data.limit, data.val_fraction)
    return estimate(kind, speed, used_train, used_val, train.resolved_epochs, data.image_size,
                    uses_feature_cache(data, train), train.fine_tune_epochs)


def apply_article_settings() -> None:
    for kind, prefix in PREFIX.items():
        for name, value in article_settings(kind).items():
            st.session_state[prefix + name] = value
    st.session_state[SIZE_KEY] = ARTICLE_IMAGE_SIZE
    text = ("Article settings: 15 and 3 epochs on every image, batches of 32, 224x224, learning rate 0.001, "
            "no augmentation or fine-tuning.")
    st.session_state[NOTICE_KEY] = ("info", text)


def apply_quick_demo() -> None:
    budget = float(st.session_state[BUDGET_KEY]) * 60
    try:
        n_train, n_val, classes = available(current_source())
        speeds = {}
        for kind in KINDS:
            data, train = configs(kind)
            speeds[kind] = speed_with_decode(kind, data, train, classes)
        transfer_data, transfer = configs(ModelKind.MOBILENET_V2)
        cap = active_preset().max_train_images  # a hosted preset's image cap bounds the search too
        preset = quick_demo(budget, speeds, min(n_train, cap or n_train), n_val, int(st.session_state[SIZE_KEY]),
                            uses_feature_cache(transfer_data, transfer), fine_tune_epochs=transfer.fine_tune_epochs)
    except LabError as exc:
        st.session_state[NOTICE_KEY] = ("error", f"The Quick demo preset needs both models timed here: {exc}")
        return
    except Exception as exc:  # a callback's exception would replace the page with a traceback
        logger.exception("timing for the Quick demo preset failed")
        text = f"Timing the models failed ({exc.__class__.__name__}); the server log has the details."
        st.session_state[NOTICE_KEY] = ("error", text)
        return
    for kind, prefix in PREFIX.items():
        st.session_state[prefix + "limit"] = preset.limit if preset.limit < n_train else 0
        st.session_state[prefix + "epochs"] = preset.epochs[kind]
    epochs = ", ".join(f"{MODEL_LABELS[k]} {preset.epochs[k]}" for k in KINDS)
    text = (f"Quick demo: {preset.limit:,} training images, epochs {epochs}; both together about "
            f"{format_duration(preset.total_seconds)} (budget {format_duration(budget)}).")
    if not preset.fits:
        text += " Even the smallest setting is over budget on this machine: raise the budget or lower the image size."
    st.session_state[NOTICE_KEY] = ("success" if preset.fits else "warning", text)


def start_job(kinds: tuple[ModelKind, ...], estimates: dict) -> None:
    experiments = []
    try:
        for kind in kinds:
            data, train = configs(kind)
            validate(data, train)
            est = estimates.get(kind)
            experiments.append(Experiment(data, train, est.total_seconds if est else None,
                                          est.fine_tune_seconds if est else None))
        # Refused when the server already trains as many models as its preset allows at once.
        st.session_state[JOB_KEY] = Job(experiments, runs_folder()).start()
    except LabError as exc:
        st.session_state[NOTICE_KEY] = ("error", str(exc))


def offline_hint() -> str:
    from core.models.demo_backbone import backbone_dir

    demo = backbone_dir()
    if (demo / "saved_model.pb").is_file():
        return f"use the demo's pretrained backbone as the hub handle: `{demo}`"
    return "use a local SavedModel folder as the hub handle (the Dataset page's generated demo includes one)"


def settings_column(kind: ModelKind, running: bool, data_ok: bool) -> Estimate | None:
    p = PREFIX[kind]
    st.markdown(chip(kind), unsafe_allow_html=True)
    a, b = st.columns(2)
    a.number_input("Epochs", min_value=1, max_value=500, step=1, key=p + "epochs")
    b.number_input("Batch size", min_value=1, max_value=1024, step=8, key=p + "batch")
    a.number_input("Learning rate", min_value=0.00001, max_value=0.5, step=0.0005, format="%.5f", key=p + "lr")
    b.number_input("Training images (0 = all)", min_value=0, step=100, key=p + "limit",
                   help="Taken evenly from every class; validation images are cut in the same 80/20 proportion.")
    st.toggle("Augment training images (random flip, rotation, zoom)", key=p + "augment",
              help="Each epoch sees slightly different versions of the training images, which helps against "
                   "overfitting small datasets. Validation images are never changed. Off matches the article.")
    if kind is ModelKind.MOBILENET_V2:
        st.text_input("Hub handle: TF Hub URL, Kaggle handle or SavedModel folder", key=HANDLE_FIELD)
        st.toggle("Compute the frozen backbone's features once", key=CACHE_FIELD,
                  help="The backbone never changes, so its output for an image is the same in every epoch. "
                       "Off: every epoch pushes every image through it again, as the article does.")
        try:
            data, train = configs(kind)
        except LabError:
            data = train = None  # the estimate below says what is wrong with the settings
        if train is not None and train.cache_features and not uses_feature_cache(data, train):
            st.caption(":material/info: Feature cache off while augmenting: a flipped, rotated or zoomed image "
                       "gives other features every epoch, so every epoch runs the backbone again.")
        a, b = st.columns(2)
        a.number_input("Fine-tuning epochs (0 = off)", min_value=0, max_value=100, step=1, key=FINE_EPOCHS_FIELD,
                       help="Epochs after the frozen ones, with the backbone unfrozen and trained too.")
        b.number_input("Fine-tuning learning rate", min_value=1e-7, max_value=0.01, step=1e-5, format="%.1e",
                       key=FINE_LR_FIELD, help="Small, so the pretrained features are adjusted, not overwritten.")
        st.caption("Fine-tuning helps with many images, or images unlike ImageNet's photos (X-rays, drawings). "
                   "It costs a forward and backward pass through the whole backbone for every image in every "
                   "epoch, far slower than the frozen epochs and never from the feature cache, and it can "
                   "overfit a small dataset.")
    if running:
        st.caption("Estimates pause while a run is in progress.")
        return None
    if not data_ok:
        st.caption("No estimate until the dataset can be opened.")
        return None
    try:
        with st.spinner("Timing a few batches on this machine ..."):
            est = run_estimate(kind)
    except OfflineError:
        st.warning(f"Offline, and this hub module is not in the cache: {offline_hint()}.", icon=":material/wifi_off:")
        return None
    except Exception as exc:
        show_error(exc, prefix="No estimate: ")
        return None
    parts = [f"setup {format_duration(est.setup_seconds)}"]
    if est.feature_seconds:
        parts.append(f"features {format_duration(est.feature_seconds)}")
    parts.append(f"{est.epochs} epoch{'s' if est.epochs > 1 else ''} × {format_duration(est.epoch_seconds)}")
    if est.fine_tune_epochs:
        parts.append(f"fine-tuning {format_duration(est.fine_tune_seconds)} for {est.fine_tune_epochs} "
                     f"epoch{'s' if est.fine_tune_epochs > 1 else ''}")
    st.markdown(f"**Estimated duration: {format_duration(est.total_seconds)}**")
    st.caption(f"{est.train_images:,} training and {est.val_images:,} validation images; "
               f"{', '.join(parts)}. Timed on this machine.")
    return est


def run_time(record) -> str:
    finished = record.metrics.get("finished_at")
    return time.strftime("%d %b %H:%M", time.localtime(finished)) if finished else record.run_id


def run_title(record) -> str:
    return f"{record.model_name} · {run_time(record)}"


def compact_shape(shape: str) -> str:
    """'(batch, 62, 62, 32)' -> '62 × 62 × 32': narrow enough for two tables side by side."""
    parts = [p.strip() for p in str(shape).strip("()[] ").split(",") if p.strip() and p.strip() != "batch"]
    return "×".join(parts) if parts else str(shape)


def run_option(record) -> str:
    acc = record.metrics.get("best_val_accuracy")
    acc_text = f", best val {acc:.1%}" if isinstance(acc, (int, float)) else ""
    stopped = ", stopped early" if record.metrics.get("stopped_early") else ""
    return f"{run_title(record)} ({len(record.history)} epochs{acc_text}{stopped})"


def curve_series(items: list[tuple[str, ModelKind | None, list]]) -> list[CurveSeries]:
    """Series for (label, model, history) items; later runs of the same model get other shades."""
    seen: dict = {}
    out = []
    for label, kind, history in items:
        out.append(CurveSeries(label, kind, history, shade=seen.get(kind, 0)))
        seen[kind] = seen.get(kind, 0) + 1
    return out


def show_curves(series: list[CurveSeries], key: str) -> None:
    show_article = st.session_state.get("exp_show_article", True)
    show_reference = st.session_state.get("exp_show_reference", True)
    left, right = st.columns(2, gap="medium")
    left.plotly_chart(training_curves(series, "accuracy", show_article, show_reference), key=f"{key}_acc")
    right.plotly_chart(training_curves(series, "loss", show_article, show_reference), key=f"{key}_loss")


@st.fragment(run_every=1.0)
def live_progress() -> None:
    job = st.session_state.get(JOB_KEY)
    if job is None:
        return
    snap = job.snapshot()
    if snap.finished:
        st.rerun()  # the whole page now shows the results
    with st.container(border=True):
        model = MODEL_LABELS.get(snap.model, "") if snap.model else ""
        head, stop = st.columns([5, 1], vertical_alignment="center")
        head.subheader(f"Training {model}" + (f" ({snap.index + 1} of {snap.total})" if snap.total > 1 else ""),
                       anchor=False)
        stop.button("Stop", icon=":material/stop_circle:", on_click=job.stop, disabled=job.stop_requested,
                    width="stretch", help="Stops after the current batch; finished epochs are saved as a run.")
        st.progress(min(1.0, max(0.0, snap.fraction)), text=snap.message)
        a, b, c = st.columns(3)
        a.metric("Epochs done", f"{snap.epoch} of {snap.epochs}")
        b.metric("Elapsed", format_duration(snap.elapsed_seconds))
        c.metric("Time left", format_duration(snap.eta_seconds) if snap.eta_seconds is not None else "estimating")
        finished_epochs = [(MODEL_LABELS[k] + " (this run)", k, list(h)) for k, h in snap.histories if h]
        if finished_epochs:
            show_curves(curve_series(finished_epochs), key="live")
        else:
            st.caption("The loss and accuracy curves appear here after the first epoch.")


def show_comparison(records, include_article: bool) -> None:
    import pandas as pd

    from core.present.tables import compare_rows
    from core.settings.reference import ARTICLE_MODELS, article, article_history, article_params

    headers, rows = compare_rows(records)
    table = pd.DataFrame(rows, columns=headers)
    table["run"] = [run_time(r) for r in records]
    table["model"] = [r.model_name for r in records]
    if include_article:
        extra = []
        for kind in KINDS:
            ref = article_history(kind)
            vals = [row["val_accuracy"] for row in ref]
            trainable = article()["mobilenet_v2_transfer"]["trainable_params"] if kind is ModelKind.MOBILENET_V2 \
                else article_params(kind)
            extra.append(["The article (GPU)", ARTICLE_MODELS[kind], str(len(ref)), f"{article_params(kind):,}",
                          f"{trainable:,}", f"{sum(r['seconds'] for r in ref) / len(ref):.1f}",
                          f"{max(vals):.2%}", f"{vals[-1]:.2%}", "–"])
        table = pd.concat([table, pd.DataFrame(extra, columns=headers)], ignore_index=True)
    table = table.replace({"-": "–"})  # a lone hyphen in a table cell would render as a bullet
    table.columns = ["Run", "Model", "Epochs", "Parameters", "Trainable", "Seconds / epoch", "Best val accuracy",
                     "Final val accuracy", "Model size (MB)"]
    st.table(table, hide_index=True, border="horizontal")


def show_summary(record) -> None:
    import json

    m = record.metrics
    st.markdown(chip(record.model_kind) + f" &nbsp; <small>{run_time(record)}</small>", unsafe_allow_html=True)
    a, b = st.columns(2)
    a.metric("Total parameters", f"{m.get('total_params', 0):,}")
    b.metric("Trainable", f"{m.get('trainable_params', 0):,}")
    layers_file = record.path / "layers.json"
    try:
        layers = json.loads(layers_file.read_text())
    except (OSError, ValueError):
        st.code(record.summary or "No layer summary in this run folder.", language=None)
        return
    rows = [{"Layer": r.get("name"), "Type": r.get("type"), "Output shape": compact_shape(r.get("output_shape")),
             "Parameters": f"{int(r.get('params', 0)):,}", "Trained": "yes" if r.get("trainable") else "no"}
            for r in layers]
    st.table(rows, hide_index=True, border="horizontal")


init_state()
st.title("Experiments")
st.caption(f"Training on {describe_source(current_source())}. Change it on the Dataset page.")
job = st.session_state.get(JOB_KEY)
running = job is not None and not job.snapshot().finished

with st.container(border=True):
    st.markdown("##### Presets")
    budget, quick, article, size = st.columns([1.2, 1, 1, 1.2], vertical_alignment="bottom")
    budget.number_input("Time budget for both (minutes)", min_value=0.5, max_value=600.0, step=0.5, key=BUDGET_KEY)
    quick.button("Quick demo", icon=":material/bolt:", on_click=apply_quick_demo, disabled=running, width="stretch",
                 help="Picks the training-image limit (and fewer epochs only if it must) so that both "
                      "experiments finish within the budget on this machine.")
    article.button("Article settings", icon=":material/menu_book:", on_click=apply_article_settings,
                   disabled=running, width="stretch", help="15 and 3 epochs on the whole dataset, as published.")
    size.number_input("Image size (pixels, square)", min_value=16, max_value=1024, step=16, key=SIZE_KEY,
                      help="The article and the TF Hub MobileNetV2 module use 224.")
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice:
        getattr(st, notice[0])(notice[1])

data_ok = True
if not running:
    try:
        with st.spinner(f"Opening {describe_source(current_source())} ..."):
            available(current_source())
    except Exception as exc:
        data_ok = False
        show_error(exc)
        st.page_link("app_pages/dataset.py", label="Choose another dataset", icon=":material/photo_library:")

estimates = {}
columns = st.columns(2, gap="large")
for kind, column in zip(KINDS, columns):
    with column, st.container(border=True):
        estimates[kind] = settings_column(kind, running, data_ok)
        if st.button(f"Run {MODEL_LABELS[kind]}", key=f"run_{kind.value}", disabled=running, width="stretch",
                     icon=":material/play_arrow:"):
            start_job((kind,), estimates)
            st.rerun()

both_total = sum(e.total_seconds for e in estimates.values() if e) if all(estimates.values()) else None
label = "Run both" + (f" (about {format_duration(both_total)})" if both_total else "")
if st.button(label, type="primary", disabled=running, icon=":material/play_circle:", key="run_both"):
    start_job(KINDS, estimates)
    st.rerun()

job = st.session_state.get(JOB_KEY)
if job is not None and not job.snapshot().finished:
    live_progress()
elif job is not None:
    snap = job.snapshot()
    if st.session_state.get(COLLECTED_KEY) != id(job):
        st.session_state[COLLECTED_KEY] = id(job)
        if snap.run_dirs:
            st.session_state[SHOWN_KEY] = [p.name for p in snap.run_dirs]
    if snap.phase == DONE:
        st.success(snap.message, icon=":material/check_circle:")
    elif snap.phase == FAILED:
        st.error(snap.message, icon=":material/error:")
    else:
        st.warning(snap.message, icon=":material/stop_circle:")

st.divider()
st.header("Results")
listing = list_runs(runs_folder())
by_id = {r.run_id: r for r in listing.runs}
if SHOWN_KEY not in st.session_state:
    newest = {}
    for record in listing.runs:  # newest first
        newest.setdefault(record.model_kind, record.run_id)
    st.session_state[SHOWN_KEY] = list(newest.values())
st.session_state[SHOWN_KEY] = [i for i in st.session_state[SHOWN_KEY] if i in by_id]
st.multiselect("Runs to show (your runs and earlier ones, including command-line runs)", list(by_id),
               format_func=lambda i: run_option(by_id[i]), key=SHOWN_KEY,
               placeholder="Pick finished runs from the runs folder")
if listing.incomplete:
    with st.expander(f"{len(listing.incomplete)} unfinished or damaged run folder(s), not shown"):
        st.caption("A run is written into a hidden folder and renamed when complete; these never completed "
                   "or are missing files.")
        st.code("\n".join(p.name for p in listing.incomplete), language=None)


def import_uploaded_run() -> None:
    """Button callback: runs before the page draws, so the imported run can join the multiselect's value."""
    from core.models.hub import web_upload_handle_allowed
    from core.runs.archives import import_run_zip

    upload = st.session_state.get("run_import_zip")
    if upload is None:
        st.session_state[IMPORT_NOTICE_KEY] = ("warning", "Choose a zipped run folder first.", [])
        return
    try:
        # Uploaded by a stranger: its model may only use hub modules the web page may (no server folders).
        imported = import_run_zip(upload.getvalue(), runs_folder(), allowed_handle=web_upload_handle_allowed)
    except LabError as exc:
        st.session_state[IMPORT_NOTICE_KEY] = ("error", str(exc), [])
        return
    st.session_state[SHOWN_KEY] = [*st.session_state.get(SHOWN_KEY, []), imported.path.name]
    st.session_state[IMPORT_NOTICE_KEY] = ("success", f"Imported {imported.path.name}; it is on the charts below.",
                                           imported.warnings)


IMPORT_NOTICE_KEY = "run_import_notice"  # (level, text, warnings) left by the import button's callback
with st.expander("Import a run trained elsewhere"):
    st.caption("A zipped run folder (`runs/<run-id>/`, e.g. from `python -m core train` on a GPU machine). "
               "Copying the folder into this runs folder works too; `python -m core import-run ZIP` does the "
               "same from a shell.")
    st.file_uploader("Zipped run folder", type=["zip"], key="run_import_zip")
    st.button("Import", key="run_import", icon=":material/upload:", on_click=import_uploaded_run)
    import_notice = st.session_state.pop(IMPORT_NOTICE_KEY, None)
    if import_notice:
        getattr(st, import_notice[0])(import_notice[1])
        for warning in import_notice[2]:
            st.warning(warning)

ORDER = {kind.value: i for i, kind in enumerate(KINDS)}
# Baseline left and transfer right everywhere on the page, as in the settings above; older runs first.
records = sorted((by_id[i] for i in st.session_state[SHOWN_KEY]),
                 key=lambda r: (ORDER.get(r.model_kind, len(ORDER)), r.metrics.get("finished_at", 0)))
toggles = st.columns([1, 1, 2])
toggles[0].toggle("Article's curves", key="exp_show_article",
                  help="Its per-epoch validation curves, drawn faint and dotted.")
toggles[1].toggle("Article's reported accuracy", key="exp_show_reference",
                  help="About 88% for the baseline and 98% for the transfer model, as lines.")
if not records:
    st.info("No runs selected. Run an experiment above, or pick earlier runs from the runs folder.",
            icon=":material/info:")
    st.stop()

multiple = {k: sum(1 for r in records if r.model_kind == k) > 1 for k in {r.model_kind for r in records}}
items = [(run_title(r) if multiple[r.model_kind] else r.model_name,
          model_kind(r.model_kind), r.history) for r in records]
show_curves(curve_series(items), key="results")

st.subheader("Comparison")
show_comparison(records, st.session_state.get("exp_show_article", True))

st.subheader("Model summaries")
per_row = 2
for start in range(0, len(records), per_row):
    for column, record in zip(st.columns(per_row, gap="large"), records[start:start + per_row]):
        with column:
            show_summary(record)

st.subheader("Evaluation on the validation split")
st.caption("Each run's saved model on the images it was validated on. In the confusion matrix rows are the true "
           "class and columns the predicted one; the diagonal holds the right answers.")
for start in range(0, len(records), per_row):
    for column, record in zip(st.columns(per_row, gap="large"), records[start:start + per_row]):
        with column:
            st.markdown(chip(record.model_kind) + f" &nbsp; <small>{run_time(record)}</small>", unsafe_allow_html=True)
            show_evaluation(record)

st.subheader("Export")
st.caption(EXPORT_GUIDE)
for start in range(0, len(records), per_row):
    for column, record in zip(st.columns(per_row, gap="large"), records[start:start + per_row]):
        with column:
            st.markdown(chip(record.model_kind) + f" &nbsp; <small>{run_time(record)}</small>", unsafe_allow_html=True)
            show_exports(record)
