"""The Experiments page's per-run sections: the reload check, evaluation on the validation split, exports.

Kept out of experiments.py so that page stays a list of sections. Reading a stored evaluation needs no
TensorFlow; evaluating a run or converting its model does, and happens only when the user asks.
"""
from __future__ import annotations

from functools import partial

import streamlit as st

from app_pages.common import show_error
from core.settings.errors import LabError
from core.settings.text import markdown_literal

GALLERY_COLUMNS = 4
# A per-class table longer than this becomes a scrolling grid rather than a page-long table.
MAX_TABLE_CLASSES = 10
# Short enough for a button in half a page; the help text says more.
BUTTON_LABELS = {"h5": "Keras .h5", "savedmodel": "SavedModel", "tflite": "TFLite float32", "tflite-int8": "TFLite int8"}
EXPORT_GUIDE = ("Which format where: **Keras .h5** to reload in Python as the article does · **SavedModel** for "
                "TF Serving or TensorFlow in other languages · **TFLite** for phones and edge devices "
                "(int8: about 4x smaller, same top class).")


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


def _gallery(evaluation) -> None:
    wrong = [w for w in evaluation.wrong if w.thumbnail.is_file()]
    if not evaluation.errors:
        st.caption("Every validation image was classified correctly: no mistakes to show.")
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


def show_evaluation(record) -> None:
    """A run's confusion matrix, per-class figures and worst mistakes; an Evaluate button if it has none."""
    from core.present.evaluation_charts import confusion_matrix_figure
    from core.runs.evaluate import load_evaluation

    try:
        evaluation = load_evaluation(record.path)
    except LabError as exc:
        show_error(exc)
        evaluation = None
    if evaluation is None:
        st.caption("This run has no evaluation: it was trained before evaluations were stored, or on the "
                   "command line with evaluation turned off.")
        if not st.button("Evaluate", key=f"evaluate_{record.run_id}", icon=":material/fact_check:",
                         help="Reloads the model and classifies every validation image once."):
            return
        evaluation = _run_evaluation(record)
        if evaluation is None:
            return
    st.caption(f"**{evaluation.accuracy:.1%}** of {evaluation.images:,} validation images right, "
               f"{evaluation.errors:,} wrong" + (f"; {evaluation.skipped:,} unreadable images skipped"
                                                   if evaluation.skipped else "") + ".")
    for note in evaluation.notes:
        st.caption(f":material/info: {note}")
    st.plotly_chart(confusion_matrix_figure(evaluation), key=f"confusion_{record.run_id}")
    _per_class_table(evaluation)
    _gallery(evaluation)


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


def _prepare(record, fmt, label: str) -> bool:
    from core.runs.export import prepare_download

    try:
        with st.spinner(f"Converting to {label} ..."):
            prepare_download(record.path, fmt)
    except Exception as exc:
        show_error(exc, prefix=f"{label}: ")
        return False
    return True


def _what(filename: str, size_bytes: int | None) -> str:
    """What the button hands over: its kind of file and, once known, that very file's size."""
    from core.settings.text import megabytes

    zipped = " · .zip" if filename.endswith(".zip") else ""  # the label already says .h5 for the model file
    return zipped + (f" · {megabytes(size_bytes)}" if size_bytes is not None else "")


def _download_bytes(run_dir, fmt) -> bytes:
    from core.runs.export import export_download

    return export_download(run_dir, fmt).data


def show_exports(record) -> None:
    """A download per export format; formats that need converting get a Prepare button first, so no
    conversion runs until the user asks for it."""
    from core.runs.export import FORMATS, download_info

    cells = [cell for _ in range(2) for cell in st.columns(2)]
    for cell, (fmt, fmt_info) in zip(cells, FORMATS.items()):
        label = BUTTON_LABELS.get(fmt.value, fmt_info.label)
        try:
            info = download_info(record.path, fmt)
        except LabError as exc:
            cell.caption(f"{fmt_info.label}: {exc}")
            continue
        slot = cell.empty()  # the Prepare button, replaced by the download once the export is written
        if not info.ready:
            if not slot.button(f"Prepare {label}", key=f"prepare_{fmt.value}_{record.run_id}",
                               icon=":material/build:", width="stretch", help=f"{fmt_info.label}: {fmt_info.use}"):
                continue
            with cell:
                if not _prepare(record, fmt, fmt_info.label):
                    continue
            info = download_info(record.path, fmt)
        # A callable: the file is read when the button is clicked, not on every rerun of the page.
        slot.download_button(f"{label}{_what(info.filename, info.size_bytes)}",
                             data=partial(_download_bytes, record.path, fmt), file_name=info.filename,
                             mime=info.mime, key=f"download_{fmt.value}_{record.run_id}", icon=":material/download:",
                             width="stretch", on_click="ignore", help=f"{fmt_info.label}: {fmt_info.use}")
    st.columns(2)[0].download_button("Whole run folder (.zip)", data=partial(_run_zip, record.path),
                                     file_name=f"{record.run_id}.zip", mime="application/zip",
                                     key=f"download_run_{record.run_id}", icon=":material/folder_zip:",
                                     on_click="ignore", width="stretch",
                                     help="Charts, summaries, evaluation and model: import it into another "
                                          "installation's run history (Import a run trained elsewhere) or with "
                                          "`python -m core import-run`.")


def _run_zip(run_dir) -> bytes:
    from core.runs.archives import export_run_zip

    return export_run_zip(run_dir)
