"""The Experiments page's per-run sections: the reload check, evaluation on the validation split, exports.

Kept out of experiments.py so that page stays a list of sections. Reading a stored evaluation needs no
TensorFlow; evaluating a run or converting its model does, and happens only when the user asks.
"""
from __future__ import annotations

from functools import partial

import streamlit as st

from app_pages.parts import session_keys as keys
from app_pages.parts.common import show_error
from core.settings.errors import LabError
from core.settings.text import markdown_literal

GALLERY_COLUMNS = 4
# A per-class table longer than this becomes a scrolling grid rather than a page-long table.
MAX_TABLE_CLASSES = 10
# Short enough for a button in half a page; the help text says more.
BUTTON_LABELS = {"h5": "Keras .h5", "savedmodel": "SavedModel", "tflite": "TFLite float32",
                 "tflite-fp16": "TFLite float16", "tflite-int8": "TFLite int8"}
EXPORT_GUIDE = ("Which format where: **Keras .h5** to reload in Python as the article does · **SavedModel** for "
                "TF Serving or TensorFlow in other languages · **TFLite** for phones and edge devices "
                "(float16: half the size, nearly full precision; int8: about 4x smaller, same top class, "
                "refused where rounding moves the model's probabilities too far).")


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _run_evaluation(record):
    """Evaluate a run now, with a progress bar; None (and an error on the page) if it cannot be done."""
    from core.runs.evaluate import evaluate_run

    bar = st.progress(0.0, text="Reloading the model and opening the dataset ...")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"Evaluating: {done:,} of {total:,} validation images")

    try:
        return evaluate_run(record.path, progress=progress)
    except Exception as exc:
        show_error(exc, prefix="Evaluation failed: ")
        return None
    finally:
        bar.empty()


def _per_class_table(evaluation) -> None:
    # Six short columns fit half a desktop page, two runs side by side; one-vs-rest accuracy, which true
    # negatives inflate, is left to the CLI's evaluate.
    rows = [{"Class": m.name, "Precision": _percent(m.precision), "Recall": _percent(m.recall),
             "F1": _percent(m.f1), "Images": f"{m.support:,}", "Predicted": f"{m.predicted:,}"}
            for m in evaluation.per_class]
    if len(rows) <= MAX_TABLE_CLASSES:
        st.table(rows, hide_index=True, border="horizontal")
    else:
        st.dataframe(rows, hide_index=True)
    macro = evaluation.macro
    st.markdown(f"**Macro average** (every class counts once, whatever its size): precision "
                f"{_percent(macro.precision)} · recall {_percent(macro.recall)} · F1 {_percent(macro.f1)}")
    st.caption("Precision: of the images predicted as the class, the share that were. Recall: of the class's "
               "images, the share found. F1: the harmonic mean of the two. Images: the class's validation "
               "images; Predicted: the images predicted as the class. – where nothing to divide by; in the "
               "macro average such a figure counts as 0.")


def _gallery(evaluation, record) -> None:
    from app_pages.parts.common import session_token
    from core.data.own_classes import belongs_to_other_session

    wrong = [w for w in evaluation.wrong if w.thumbnail.is_file()]
    if not evaluation.errors:
        st.caption("Every validation image was classified correctly: no mistakes to show.")
        return
    if belongs_to_other_session(record.source, session_token()):
        st.caption(":material/lock: Trained on another participant's own photos: only they see its mistakes.")
        return
    if not wrong:
        st.caption("The thumbnails of this evaluation's mistakes are missing; evaluate the run again.")
        return
    st.markdown(f"**Most confidently wrong** <small>({len(wrong)} of {evaluation.errors:,} mistakes)</small>",
                unsafe_allow_html=True)
    for start in range(0, len(wrong), GALLERY_COLUMNS):
        for column, item in zip(st.columns(GALLERY_COLUMNS), wrong[start:start + GALLERY_COLUMNS]):
            column.image(str(item.thumbnail), width="stretch")
            column.caption(f"true **{markdown_literal(item.true_label)}**  \npredicted **{markdown_literal(item.predicted_label)}** "
                           f"({item.confidence:.0%})")


# Built once per evaluation file and shared by every session showing the run (as the results' curves are).
@st.cache_resource(show_spinner=False, max_entries=64)
def _confusion_figure(path: str, version: tuple, _evaluation):
    from core.present.evaluation_charts import confusion_matrix_figure

    return confusion_matrix_figure(_evaluation)


def _evaluation_version(record) -> tuple | None:
    from core.runs.evaluate import EVALUATION_FILE

    try:
        stat = (record.path / EVALUATION_FILE).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def show_evaluation(record) -> None:
    """A run's confusion matrix, per-class figures and worst mistakes; an Evaluate button if it has none."""
    from core.present.evaluation_charts import confusion_matrix_figure
    from core.runs.evaluate import load_evaluation

    version = _evaluation_version(record)  # before reading: a file replaced meanwhile is drawn again next time
    try:
        evaluation = load_evaluation(record.path)
    except LabError as exc:
        show_error(exc)
        evaluation = None
    if evaluation is None:
        st.caption("This run has no evaluation: it was trained before evaluations were stored, or on the "
                   "command line with evaluation turned off.")
        if not st.button("Evaluate", key=keys.EVALUATE_BUTTON.key(record.run_id), icon=":material/fact_check:",
                         help="Reloads the model and classifies every validation image once."):
            return
        evaluation, version = _run_evaluation(record), None
        if evaluation is None:
            return
    st.caption(f"**{evaluation.accuracy:.1%}** of {evaluation.images:,} validation images right, "
               f"{evaluation.errors:,} wrong" + (f"; {evaluation.skipped:,} unreadable images skipped"
                                                   if evaluation.skipped else "") + ".")
    for note in evaluation.notes:
        st.caption(f":material/info: {note}")
    figure = (_confusion_figure(str(record.path), version, evaluation) if version is not None
              else confusion_matrix_figure(evaluation))
    st.plotly_chart(figure, key=keys.CONFUSION_CHART.key(record.run_id))
    _per_class_table(evaluation)
    _gallery(evaluation, record)


def show_reload_check(record) -> None:
    """The article's last step for this run: the reload line of code and what it gave when the run was saved."""
    from core.present.tables import describe_reload_check
    from core.runs.reload_check import RELOAD_CHECK_KEY, RELOAD_CODE

    st.markdown("**Saved and reloaded, as the article ends**")
    st.code(RELOAD_CODE, language="python", wrap_lines=True)  # whole in half a page, not scrolled off
    check = record.metrics.get(RELOAD_CHECK_KEY)
    if isinstance(check, dict) and "error" in check:
        st.text(describe_reload_check(record.metrics))  # the stored message is data from the run folder
        return
    exact = isinstance(check, dict) and check.get("max_abs_diff") == 0
    st.caption(f"{':material/check_circle:' if exact else ':material/info:'} {describe_reload_check(record.metrics)}")


def _prepare(record, fmt, label: str, refusals: dict) -> bool:
    """Convert now, under a spinner; a refused TFLite file goes to `refusals` (shown below the buttons,
    with what to export instead), any other failure is shown in place."""
    from core.runs.export import ExportRefused, prepare_download

    try:
        with st.spinner(f"Converting to {label} ..."):
            prepare_download(record.path, fmt)
    except ExportRefused as refused:
        refusals[fmt] = refused
        return False
    except Exception as exc:
        show_error(exc, prefix=f"{label}: ")
        return False
    return True


def _wanted_key(fmt, record) -> str:
    """Session key set by an "instead" offer: prepare this format on the next run of the page."""
    return keys.EXPORT_WANTED.key(fmt.value, record.run_id)


def _want(key: str) -> None:
    st.session_state[key] = True


def _show_refusals(record, refusals: dict) -> None:
    """Why a TFLite file was not written, in the run's full width, and a button for the format to use instead."""
    from core.runs.export import download_info

    for refused in refusals.values():
        st.warning(markdown_literal(str(refused)), icon=":material/block:")  # numbers and names, no paths
        alternative = refused.alternative
        if alternative is None:
            continue
        label = BUTTON_LABELS.get(alternative.value, alternative.value)
        info = download_info(record.path, alternative)
        if info.ready:
            st.caption(f"{label} is ready above.")
        elif info.refused is None:
            st.button(f"Prepare {label} instead", key=keys.EXPORT_INSTEAD.key(alternative.value, record.run_id),
                      icon=":material/build:", on_click=_want, args=(_wanted_key(alternative, record),))


def _what(filename: str, size_bytes: int | None) -> str:
    """What the button hands over: its kind of file and, once known, that very file's size."""
    from core.settings.text import megabytes

    zipped = " · .zip" if filename.endswith(".zip") else ""  # the label already says .h5 for the model file
    return zipped + (f" · {megabytes(size_bytes)}" if size_bytes is not None else "")


def _short(seconds: float) -> str:
    """'~40 s', '~3 min': a duration that fits a half-width button beside its label (longer ones are cut)."""
    return f"~{max(1, round(seconds))} s" if seconds < 59.5 else f"~{round(seconds / 60)} min"


def _download_bytes(run_dir, fmt) -> bytes:
    from core.runs.export import export_download

    return export_download(run_dir, fmt).data


def show_exports(record) -> None:
    """A download per export format; formats that need converting get a Prepare button first, saying how
    long it will take, so no conversion runs until the user asks for it. A TFLite file the agreement check
    refused is remembered: its button says so, and the format to use instead is offered below."""
    from core.runs.export import FORMATS, download_info, export_estimate

    rows = len(FORMATS) // 2 + 1  # the formats, then the whole run folder in the last free cell
    st.caption(":material/build: converts the model when clicked, in about the time shown, then offers the "
               "download; :material/download: downloads at once.")
    cells = [cell for _ in range(rows) for cell in st.columns(2)]
    refusals = {}
    for cell, (fmt, fmt_info) in zip(cells, FORMATS.items()):
        label = BUTTON_LABELS.get(fmt.value, fmt_info.label)
        wanted = st.session_state.pop(_wanted_key(fmt, record), False)
        try:
            info = download_info(record.path, fmt)
        except LabError as exc:
            cell.caption(f"{fmt_info.label}: {exc}")
            continue
        slot = cell.empty()  # the Prepare button, replaced by the download once the export is written
        if info.refused is not None:
            refusals[fmt] = info.refused
            slot.button(f"{label} · refused", key=keys.EXPORT_REFUSED.key(fmt.value, record.run_id), icon=":material/block:",
                        width="stretch", disabled=True, help="Not written for this run: the reason is below.")
            continue
        if not info.ready:
            estimate = export_estimate(record.path, fmt)
            cost = "" if estimate is None else f" · {_short(estimate.seconds)}"
            takes = "" if estimate is None else f" Converting takes {estimate.describe()}."
            # "Prepare" is left to the icon and the caption: with a time in minutes it cut the label off.
            clicked = slot.button(f"{label}{cost}", key=keys.EXPORT_PREPARE.key(fmt.value, record.run_id),
                                  icon=":material/build:", width="stretch",
                                  help=f"Prepare {fmt_info.label}: {fmt_info.use}.{takes}")
            if not (clicked or wanted):
                continue
            with cell:
                if not _prepare(record, fmt, fmt_info.label, refusals):
                    if fmt in refusals:
                        slot.button(f"{label} · refused", key=keys.EXPORT_REFUSED.key(fmt.value, record.run_id),
                                    icon=":material/block:", width="stretch", disabled=True,
                                    help="Not written for this run: the reason is below.")
                    continue
            info = download_info(record.path, fmt)
        # A callable: the file is read when the button is clicked, not on every rerun of the page.
        slot.download_button(f"{label}{_what(info.filename, info.size_bytes)}",
                             data=partial(_download_bytes, record.path, fmt), file_name=info.filename,
                             mime=info.mime, key=keys.DOWNLOAD.key(fmt.value, record.run_id), icon=":material/download:",
                             width="stretch", on_click="ignore", help=f"{fmt_info.label}: {fmt_info.use}")
    cells[len(FORMATS)].download_button(
        "Whole run folder (.zip)", data=partial(_run_zip, record.path), file_name=f"{record.run_id}.zip",
        mime="application/zip", key=keys.DOWNLOAD.key("run", record.run_id), icon=":material/folder_zip:",
        on_click="ignore", width="stretch",
        help="Charts, summaries, evaluation and model: import it into another installation's run history "
             "(Import a run trained elsewhere) or with `python -m core import-run`.")
    _show_refusals(record, refusals)


def _run_zip(run_dir) -> bytes:
    from core.runs.archives import export_run_zip

    return export_run_zip(run_dir)
