"""Data efficiency: both models trained on a few images per class, to see which one needs less data."""
import streamlit as st

from app_pages.parts import session_keys as keys
from app_pages.parts.common import (
    current_handle,
    current_source,
    describe_handle,
    describe_source,
    open_source_cached,
    session_token,
    show_error,
)
from app_pages.parts.training_panel import board, follow, running_now
from core.present.charts import data_efficiency_chart
from core.settings.config import ARTICLE_EPOCHS, DataConfig, ModelKind, TrainConfig
from core.settings.errors import LabError
from core.settings.presets import active_preset, capped_batch_size
from core.settings.text import percent


def queue() -> None:
    """Check the settings and queue the measurement as a job of the board (an identical one is joined)."""
    import hashlib
    import json

    from core.settings.presets import check_efficiency_images
    from core.training.board import experiment_fingerprint
    from core.training.efficiency import TASK, checked_settings
    from core.training.jobs import Experiment

    counts_text, size, baseline_epochs = (st.session_state[k] for k in (keys.EXP_EFF_COUNTS, keys.EXP_EFF_SIZE, keys.EXP_EFF_EPOCHS))
    try:
        counts = [int(part) for part in counts_text.replace(" ", "").split(",") if part]
    except ValueError:
        counts = []
    try:
        if not counts:
            raise LabError("Give the counts as whole numbers separated by commas, e.g. 5, 10, 20.")
        data = DataConfig(source=current_source(), image_size=int(size),
                          batch_size=capped_batch_size(DataConfig.batch_size, active_preset()))
        data, counts, epochs, _ = checked_settings(data, current_handle(), counts,
                                                   {ModelKind.BASELINE: int(baseline_epochs)}, preset=active_preset())
        classes = open_source_cached(data.source).info.num_classes
        check_efficiency_images(counts[-1], classes, active_preset())  # said now, not after a wait in the queue
        train = TrainConfig(model=ModelKind.TRANSFER, epochs=epochs[ModelKind.TRANSFER], handle=current_handle())
        task = {"kind": TASK, "counts": counts, "baseline_epochs": epochs[ModelKind.BASELINE]}
        # The same data, backbone and counts measured again give the same figures: a room joins one job.
        fingerprint = hashlib.sha256((experiment_fingerprint(open_source_cached(data.source), data, train)
                                      + json.dumps(task, sort_keys=True)).encode()).hexdigest()[:16]
        submission = board().submit([Experiment(data, train)], [f"{TASK}-{fingerprint}"], owner=session_token(),
                                    task=task)
    except Exception as exc:
        show_error(exc)
        return
    follow(submission.job_id)
    st.session_state[keys.EXP_EFFICIENCY_JOB] = submission.job_id


def result_of(view):
    """The finished measurement's result, or None (not finished, failed, stopped, or its folder is gone)."""
    from core.settings.files import read_json
    from core.training.efficiency import RESULT_FILE, result_from_dict
    from core.training.jobs import DONE

    if view is None or view.snapshot.phase != DONE:
        return None
    saved = read_json(view.path / RESULT_FILE, dict, max_bytes=1024 * 1024)
    return result_from_dict(saved) if saved is not None else None


st.title("Data efficiency")
st.caption("How many images does each model need? Both are trained at each count of training images per class "
           "(the baseline CNN from scratch, the transfer model's Dense layer on the frozen backbone) and scored "
           "on the whole validation split. The backbone's features are computed once, so the transfer side is "
           "cheap; the baseline is retrained at every count. The measurement waits its turn on the job board "
           "like any training: it has a Stop button, and a reload finds it again.")
st.info(f"Dataset: {describe_source(current_source())} · hub handle: {describe_handle(current_handle())}. Change "
        "them on the Dataset and Experiments pages.", icon=":material/info:")

# The preset's caps bound what the fields offer; core checks them again before queueing and in the worker.
preset = active_preset()
for key, value in ((keys.EXP_EFF_COUNTS, "5, 10, 20, 40, 80"), (keys.EXP_EFF_SIZE, 64), (keys.EXP_EFF_EPOCHS, ARTICLE_EPOCHS[ModelKind.BASELINE])):
    st.session_state.setdefault(key, value)
# A size kept from a visit under another preset may be over this one's cap.
st.session_state[keys.EXP_EFF_SIZE] = min(int(st.session_state[keys.EXP_EFF_SIZE]), preset.max_efficiency_image_size or 512)
a, b, c = st.columns(3)
a.text_input("Images per class", key=keys.EXP_EFF_COUNTS,
             help="Comma-separated counts; each class contributes at most this many training images.")
b.number_input("Image size (pixels, square)", min_value=48,
               max_value=min(512, preset.max_efficiency_image_size or 512), step=16, key=keys.EXP_EFF_SIZE)
c.number_input("Baseline epochs", min_value=1, max_value=min(100, preset.max_epochs or 100), key=keys.EXP_EFF_EPOCHS)
if preset.max_efficiency_images is not None:
    st.caption(f"The {preset.name} preset measures on at most {preset.max_efficiency_images:,} training images "
               "(the largest count times the classes).")

st.button("Measure", type="primary", icon=":material/play_arrow:", on_click=queue)
running_now()

job_id = st.session_state.get(keys.EXP_EFFICIENCY_JOB)
try:
    result = result_of(board().view(job_id)) if job_id else None
except LabError as exc:
    show_error(exc)
    result = None
if result is not None:
    st.plotly_chart(data_efficiency_chart(result), key=keys.EFF_CHART)
    rows = {result.labels[kind]: {f"{n} per class": percent(acc) for n, acc in result.accuracies(kind)}
            for kind in ModelKind}
    st.table(rows)
