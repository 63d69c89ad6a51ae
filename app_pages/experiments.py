"""Experiments: both models configured side by side, estimated, trained in worker processes, compared."""
import logging
import time

import streamlit as st

from app_pages.parts import session_keys as keys
from app_pages.parts.common import (
    chip,
    current_handle,
    current_source,
    describe_source,
    handle_field_text,
    handle_from_field,
    session_token,
    show_error,
)
from app_pages.parts.estimates import Pending, available, observed, run_estimate, speed, worker_start
from app_pages.parts.results import results, show_runs
from app_pages.parts.training_panel import (
    FINISH_SEEN_SECONDS,
    board,
    live_curves,
    own_active_job,
    running_now,
    show_shared_job,
    submit,
)
from core.models.hub import check_web_handle
from core.present.labels import estimate_details, estimate_source, run_time
from core.runs.folders import open_run
from core.settings.config import ARTICLE_IMAGE_SIZE, DataConfig, ModelKind, TrainConfig, spec
from core.settings.errors import LabError, OfflineError
from core.settings.presets import (
    ARTICLE_SETTINGS_NOTE,
    active_preset,
    apply_preset,
    article_settings,
)
from core.settings.text import duration
from core.training.estimate import Estimate, quick_demo

logger = logging.getLogger("app_pages.experiments")  # a page runs as __main__

KINDS = (ModelKind.BASELINE, ModelKind.TRANSFER)  # the article's order, left to right
QUICK_DEMO_WAIT_SECONDS = 90.0  # how long the Quick demo button waits for both models' timings
# A button's notice stays this long: the page reruns by itself meanwhile (an estimate arriving, a training's end),
# and a notice shown by one run only was gone before a busy browser drew it (a Quick demo's settings).
NOTICE_SECONDS = 30.0


def notify(level: str | None, text: str = "") -> None:
    """Leave a notice (st.<level>) for the page's next runs; None removes the current one."""
    st.session_state[keys.EXP_NOTICE] = (level, text, time.time()) if level else None
TIMING_POLL_SECONDS = 2.0  # how often a page whose estimates are being timed looks for them
# "Run both" trains the transfer model first: its result is on the charts in seconds, while the baseline's
# minutes follow; the article's order stays in the columns and the comparison table.
RUN_BOTH = (ModelKind.TRANSFER, ModelKind.BASELINE)


def setting(kind: ModelKind, name: str) -> str:
    """The session key of one model's training field: setting(ModelKind.BASELINE, "epochs") is exp_b_epochs."""
    return keys.MODEL_SETTING.key(spec(kind).key, name)


FINE_EPOCHS_FIELD, FINE_LR_FIELD = setting(ModelKind.TRANSFER, "ft_epochs"), setting(ModelKind.TRANSFER, "ft_lr")


def init_state() -> None:
    for kind in ModelKind:
        for name, value in article_settings(kind).items():
            st.session_state.setdefault(setting(kind, name), value)
    for key, value in ((keys.EXP_IMAGE_SIZE, ARTICLE_IMAGE_SIZE), (keys.EXP_BUDGET_MIN, 3.0),
                       (keys.EXP_SEED, DataConfig.seed), (keys.EXP_T_HANDLE, handle_field_text(current_handle())),
                       (keys.EXP_T_CACHE, True), (keys.EXP_SHOW_ARTICLE, True), (keys.EXP_SHOW_REFERENCE, True)):
        st.session_state.setdefault(key, value)


def configs(kind: ModelKind) -> tuple[DataConfig, TrainConfig]:
    s = st.session_state

    def field(name: str):
        return s[setting(kind, name)]

    transfer = spec(kind).has_backbone
    data = DataConfig(source=current_source(), image_size=int(s[keys.EXP_IMAGE_SIZE]), batch_size=int(field("batch")),
                      limit=int(field("limit")) or None, augment=bool(field("augment")), seed=int(s[keys.EXP_SEED]))
    train = TrainConfig(model=kind, epochs=int(field("epochs")), learning_rate=float(field("lr")),
                        handle=handle_from_field(s[keys.EXP_T_HANDLE]), cache_features=bool(s[keys.EXP_T_CACHE]),
                        fine_tune_epochs=int(s[FINE_EPOCHS_FIELD]) if transfer else 0,
                        fine_tune_learning_rate=float(s[FINE_LR_FIELD]),
                        class_weight="balanced" if field("balance") else None)
    if transfer and not active_preset().allow_local_paths:
        check_web_handle(train.handle)  # the handle field must not name the server's own folders
    # The preset's caps (images, batch, image size, server folders) apply to estimates and runs alike.
    return apply_preset(data, train), train


def apply_article_settings() -> None:
    for kind in ModelKind:
        for name, value in article_settings(kind).items():
            st.session_state[setting(kind, name)] = value
    st.session_state[keys.EXP_IMAGE_SIZE] = ARTICLE_IMAGE_SIZE
    notify("info", ARTICLE_SETTINGS_NOTE)


def apply_quick_demo() -> None:
    from core.settings.config import uses_feature_cache

    budget = float(st.session_state[keys.EXP_BUDGET_MIN]) * 60
    try:
        n_train, n_val, classes = available(current_source())
        # A callback may wait: the timing runs in a child process, and waiting on it holds nothing.
        speeds = {kind: speed(kind, *configs(kind), classes, wait_seconds=QUICK_DEMO_WAIT_SECONDS) for kind in KINDS}
        transfer_data, transfer = configs(ModelKind.TRANSFER)
        cap = active_preset().max_train_images  # a hosted preset's image cap bounds the search too
        preset = quick_demo(budget, speeds, min(n_train, cap or n_train), n_val, int(st.session_state[keys.EXP_IMAGE_SIZE]),
                            uses_feature_cache(transfer_data, transfer), fine_tune_epochs=transfer.fine_tune_epochs,
                            start_seconds=worker_start() + FINISH_SEEN_SECONDS,
                            observed={kind: observed(*configs(kind)) for kind in KINDS})
    except Pending:
        text = ("Both models are still being timed on this server (others may be ahead in line); press Quick demo "
                "again in a minute.")
        notify("warning", text)
        return
    except Exception as exc:  # a callback's exception would replace the page with a traceback
        if not isinstance(exc, LabError):
            logger.exception("timing for the Quick demo preset failed")
        text = str(exc) if isinstance(exc, LabError) else f"timing failed ({exc.__class__.__name__})"
        notify("error", f"The Quick demo preset needs both models timed here: {text}")
        return
    for kind in ModelKind:
        st.session_state[setting(kind, "limit")] = preset.limit if preset.limit < n_train else 0
        st.session_state[setting(kind, "epochs")] = preset.epochs[kind]
    epochs = ", ".join(f"{spec(k).label} {preset.epochs[k]}" for k in KINDS)
    text = (f"Quick demo: {preset.limit:,} training images, epochs {epochs}; both together about "
            f"{duration(preset.total_seconds)} (budget {duration(budget)}). "
            f"{estimate_source(*preset.estimates.values())}.")
    if not preset.fits:
        text += " Even the smallest setting is over budget on this machine: raise the budget or lower the image size."
    notify("success" if preset.fits else "warning", text)


def start(kinds: tuple[ModelKind, ...], estimates: dict) -> None:
    """Queue the experiments as one job, unless they were trained here already or are training now."""
    from core.training.jobs import Experiment

    experiments = []
    capped = active_preset().max_job_minutes is not None
    try:
        for kind in kinds:
            data, train = configs(kind)
            est = estimates.get(kind)
            if est is None and capped:  # a host that caps a training's length needs its estimate first
                est = estimate_waited(kind, data, train)
            experiments.append(Experiment(data, train, est.total_seconds if est else None,
                                          est.fine_tune_seconds if est else None))
        submission = submit(experiments, session_token())
    except LabError as exc:  # shown by the rerun that follows the click
        notify("error", str(exc))
        return
    except Exception as exc:
        logger.exception("queueing a training failed")
        text = f"The training could not be queued ({exc.__class__.__name__}); the server log has the details."
        notify("error", text)
        return
    reused = [open_run(path) for path in submission.reused.values()]
    st.session_state[keys.EXP_REUSED] = [r.run_id for r in reused]
    show_runs([r.run_id for r in reused], keep=False)
    notes = [f"{spec(kinds[i]).label} was trained here already with the same data, settings and seed "
             f"({run_time(r)}): its run is on the charts below. Change the seed to train it again."
             for i, r in zip(submission.reused, reused)]
    if submission.job_id and submission.attached:
        notes.append("The same training was already queued or running for another session: following it, "
                     "so it trains once.")
    notify("info" if notes else None, " ".join(notes))


def estimate_waited(kind: ModelKind, data: DataConfig, train: TrainConfig) -> Estimate | None:
    """The estimate, waiting for its timing if it is still on its way (waiting holds nothing)."""
    try:
        speed(kind, data, train, available(data.source)[2], wait_seconds=QUICK_DEMO_WAIT_SECONDS)
        return run_estimate(data, train)
    except Pending:
        return None


def settings_column(kind: ModelKind, busy: bool, data_ok: bool) -> Estimate | None:
    st.markdown(chip(kind), unsafe_allow_html=True)
    a, b = st.columns(2)
    a.number_input("Epochs", min_value=1, max_value=500, step=1, key=setting(kind, "epochs"))
    b.number_input("Batch size", min_value=1, max_value=1024, step=8, key=setting(kind, "batch"))
    a.number_input("Learning rate", min_value=0.00001, max_value=0.5, step=0.0005, format="%.5f", key=setting(kind, "lr"))
    b.number_input("Training images (0 = all)", min_value=0, step=100, key=setting(kind, "limit"),
                   help="Taken evenly from every class; validation images are cut in the same 80/20 proportion.")
    st.toggle("Augment training images (random flip, rotation, zoom)", key=setting(kind, "augment"),
              help="Each epoch sees slightly different versions of the training images, which helps against "
                   "overfitting small datasets. Validation images are never changed. Off matches the article.")
    st.toggle("Balance the classes", key=setting(kind, "balance"),
              help="Weights each class's loss by images / (classes x its images), so a small class counts as much "
                   "as a large one; recorded in config.json. Off matches the article.")
    if spec(kind).has_backbone:
        transfer_fields()
    if busy:
        st.caption("Estimates pause while your training runs, so they do not slow it down.")
        return None
    if not data_ok:
        st.caption("No estimate until the dataset can be opened.")
        return None
    try:
        est = run_estimate(*configs(kind))
    except Pending:
        timing.add(kind)
        # A host that caps a training's length by its estimate (capped_length) needs the estimate before Run.
        st.caption(":material/timer: Timing a few batches on this server; the estimate appears here in a moment"
                   + (" and Run with it." if capped_length else ". You can start a run meanwhile."))
        return None
    except OfflineError:
        # It could not train either: its Run buttons are disabled below, and this says what to do instead.
        unreachable.add(kind)
        st.warning("Offline, and this hub module is not in the cache, so this model cannot train here. Put a "
                   "SavedModel folder in the hub handle field above: the Dataset page's **Generated demo** "
                   "makes one and fills it in.", icon=":material/wifi_off:")
        return None
    except Exception as exc:
        show_error(exc, prefix="No estimate: ")
        return None
    st.markdown(f"**Estimated duration: {duration(est.total_seconds)}**")
    st.caption(estimate_details(est))
    return est


@st.fragment(run_every=TIMING_POLL_SECONDS)
def await_estimates(kinds: tuple[str, ...]) -> None:
    """Draws nothing; reruns the page once the estimates being timed are there (or their timing failed)."""
    for value in kinds:
        try:
            run_estimate(*configs(ModelKind(value)))
        except Pending:
            return
        except Exception as exc:  # the page's rerun shows what went wrong, in its column
            logger.debug("timing ended with %s", exc.__class__.__name__)
    st.rerun()


def transfer_fields() -> None:
    from core.settings.config import uses_feature_cache

    st.text_input("Hub handle: TF Hub URL, Kaggle handle or SavedModel folder", key=keys.EXP_T_HANDLE)
    st.toggle("Compute the frozen backbone's features once", key=keys.EXP_T_CACHE,
              help="The backbone never changes, so its output for an image is the same in every epoch. "
                   "Off: every epoch pushes every image through it again, as the article does.")
    try:
        data, train = configs(ModelKind.TRANSFER)
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
    st.caption("Fine-tuning helps with many images, or images unlike ImageNet's photos. It trains the whole "
               "backbone on every image in every epoch, far slower than the frozen epochs, and can overfit.")


init_state()
show_shared_job(st.query_params.get("job", ""))
st.title("Experiments")
st.caption(f"Training on {describe_source(current_source())}. Change it on the Dataset page.")
busy = own_active_job(board().active())

with st.container(border=True):
    st.markdown("##### Presets")
    budget, quick, article, size, seed = st.columns([1.2, 1, 1, 1.1, 0.8], vertical_alignment="bottom")
    budget.number_input("Time budget for both (minutes)", min_value=0.5, max_value=600.0, step=0.5, key=keys.EXP_BUDGET_MIN)
    quick.button("Quick demo", icon=":material/bolt:", on_click=apply_quick_demo, disabled=busy, width="stretch",
                 help="Picks the training-image limit (and fewer epochs only if it must) so that both "
                      "experiments finish within the budget on this machine.")
    article.button("Article settings", icon=":material/menu_book:", on_click=apply_article_settings,
                   disabled=busy, width="stretch", help="15 and 3 epochs on the whole dataset, as published.")
    size.number_input("Image size (pixels, square)", min_value=16, max_value=1024, step=16, key=keys.EXP_IMAGE_SIZE,
                      help="The article and the TF Hub MobileNetV2 module use 224.")
    seed.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=keys.EXP_SEED,
                      help="Fixes the split, the shuffle order and the initial weights. The same data, settings "
                           "and seed give the same run, so it is trained only once.")
    notice = st.session_state.get(keys.EXP_NOTICE)
    if notice and time.time() - notice[2] < NOTICE_SECONDS:
        getattr(st, notice[0])(notice[1])

data_ok = True
if not busy:
    try:
        with st.spinner(f"Opening {describe_source(current_source())} ..."):
            available(current_source())
    except OfflineError as exc:
        data_ok = False
        if st.session_state.get(keys.DS_LOADED) == current_source():
            show_error(exc)
        else:  # nothing chosen yet in this session: the article's dataset is a default, not a mistake
            st.info(f"{describe_source(current_source())} is not downloaded on this server and the network is "
                    "unreachable. Choose a dataset first: the Generated demo works offline.", icon=":material/wifi_off:")
        st.page_link("app_pages/dataset.py", label="Choose a dataset", icon=":material/photo_library:")
    except Exception as exc:
        data_ok = False
        show_error(exc)
        st.page_link("app_pages/dataset.py", label="Choose another dataset", icon=":material/photo_library:")

estimates = {}
unreachable: set = set()  # models whose hub module is neither reachable nor cached
timing: set = set()  # models whose estimate is still being timed
capped_length = active_preset().max_job_minutes is not None
for kind, column in zip(KINDS, st.columns(2, gap="large")):
    with column, st.container(border=True):
        estimates[kind] = settings_column(kind, busy, data_ok)
        if st.button(f"Run {spec(kind).label}", key=keys.RUN_BUTTON.key(kind.value),
                     disabled=busy or not data_ok or kind in unreachable or (capped_length and kind in timing),
                     width="stretch", icon=":material/play_arrow:"):
            start((kind,), estimates)
            st.rerun()

both_total = sum(e.total_seconds for e in estimates.values()) + worker_start() if all(estimates.values()) else None
label = "Run both" + (f" (about {duration(both_total)})" if both_total else "")
if st.button(label, type="primary", disabled=busy or not data_ok or bool(unreachable) or (capped_length and bool(timing)),
             icon=":material/play_circle:",
             key=keys.RUN_BUTTON.key("both")):
    start(RUN_BOTH, estimates)
    st.rerun()
if timing:
    await_estimates(tuple(sorted(k.value for k in timing)))
# Right under the buttons that start a training: on a phone, what a tap started is on screen, not above it.
running_now()
live_curves()

st.divider()
results()
