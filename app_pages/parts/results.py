"""The Experiments page's results: chosen runs on shared charts, a comparison table with the article's
numbers, both model summaries, evaluation and exports. Any finished run of the runs folder can be chosen."""
from __future__ import annotations

import streamlit as st

from app_pages.parts import session_keys as keys
from app_pages.parts.common import chip, note_imported_run, others_imports, public_text, runs_folder, show_error
from app_pages.parts.run_details import EXPORT_GUIDE, show_evaluation, show_exports, show_reload_check
from core.present.charts import CurveSeries, model_kind, training_curves
from core.present.labels import compact_shape, run_option, run_time, run_title
from core.present.tables import article_rows, compare_rows, layer_rows
from core.runs.folders import list_runs
from core.settings.config import ModelKind
from core.settings.errors import LabError
from core.settings.text import markdown_literal

ORDER = {kind.value: i for i, kind in enumerate(ModelKind)}  # baseline left, transfer right
COLUMNS = ["Run", "Model", "Epochs", "Parameters", "Trainable", "Seconds / epoch", "Best val accuracy",
           "Final val accuracy", "Model size (MB)"]


def show_runs(run_ids, keep: bool = True) -> None:
    """Put these runs on the charts, beside those already there (keep) or instead of them."""
    shown = list(st.session_state.get(keys.EXP_SHOWN, [])) if keep else []
    _set_shown(shown + [r for r in run_ids if r not in shown])


def _set_shown(run_ids: list) -> None:
    """The runs on the charts, set by the page: drawn by a new picker widget, so no stale value can win."""
    st.session_state.pop(picker_key(), None)
    st.session_state[keys.RUNS_PICKER_GENERATION] = st.session_state.get(keys.RUNS_PICKER_GENERATION, 0) + 1
    st.session_state[keys.EXP_SHOWN] = list(run_ids)


def picker_key() -> str:
    """The run picker's current widget key: a new one whenever the page, not the user, sets the runs. A message
    the browser sent before it saw the new runs carries the old widget's value, which would otherwise win over
    them (a room's pages, polling every 2 s, lost results that way)."""
    return keys.RUNS_PICKER.key(st.session_state.get(keys.RUNS_PICKER_GENERATION, 0))


def show_runs_next(run_ids) -> None:
    """Put these runs on the charts instead of the others at the page's next full run.

    For a fragment's run: the run picker is a widget outside it, whose value written there can lose to the
    value the browser sends back; the next full run writes it before the picker is drawn."""
    st.session_state[keys.EXP_SHOWN_NEXT] = list(run_ids)


def curve_series(items) -> list[CurveSeries]:
    """Series for (label, model, history) items; later runs of the same model get other shades."""
    seen: dict = {}
    out = []
    for label, kind, history in items:
        out.append(CurveSeries(label, kind, history, shade=seen.get(kind, 0)))
        seen[kind] = seen.get(kind, 0) + 1
    return out


def _import_uploaded_run() -> None:
    """Button callback: runs before the page draws, so the imported run can join the multiselect's value."""
    from core.models.hub import web_upload_handle_allowed
    from core.runs.archives import import_run_zip

    upload = st.session_state.get(keys.RUN_IMPORT_ZIP)
    if upload is None:
        st.session_state[keys.RUN_IMPORT_NOTICE] = ("warning", "Choose a zipped run folder first.", [])
        return
    try:
        # Uploaded by a stranger: its model may only use hub modules the web page may (no server folders).
        imported = import_run_zip(upload.getvalue(), runs_folder(), allowed_handle=web_upload_handle_allowed)
    except LabError as exc:
        st.session_state[keys.RUN_IMPORT_NOTICE] = ("error", public_text(exc), [])
        return
    note_imported_run(imported.path.name)
    show_runs([imported.path.name])
    st.session_state[keys.RUN_IMPORT_NOTICE] = ("success", f"Imported {imported.path.name}; it is on the charts below.",
                                           [public_text(warning) for warning in imported.warnings])


def import_section() -> None:
    with st.expander("Import a run trained elsewhere"):
        st.caption("A zipped run folder (`runs/<run-id>/`, e.g. from `python -m core train` on a GPU machine). "
                   "Copying the folder into this runs folder works too; `python -m core import-run ZIP` does the "
                   "same from a shell.")
        st.file_uploader("Zipped run folder", type=["zip"], key=keys.RUN_IMPORT_ZIP)
        st.button("Import", key=keys.RUN_IMPORT, icon=":material/upload:", on_click=_import_uploaded_run)
        notice = st.session_state.pop(keys.RUN_IMPORT_NOTICE, None)
        if notice:
            getattr(st, notice[0])(notice[1])
            for warning in notice[2]:
                st.warning(warning)


def pick_runs() -> list:
    """The run picker; returns the chosen runs, baseline first and older first."""
    listing = list_runs(runs_folder())
    by_id = {r.run_id: r for r in listing.runs}
    pending = st.session_state.pop(keys.EXP_SHOWN_NEXT, None)
    if pending is not None:
        show_runs(pending, keep=False)
    if keys.EXP_SHOWN not in st.session_state:
        newest = {}
        others = others_imports()  # another visitor's import is shown only to whoever picks it
        for record in listing.runs:  # newest first
            if record.run_id not in others:
                newest.setdefault(record.model_kind, record.run_id)
        _set_shown(list(newest.values()))
    chosen = st.session_state.get(picker_key(), st.session_state[keys.EXP_SHOWN])
    if any(i not in by_id for i in chosen):  # a run deleted since: the picker must not offer it
        _set_shown([i for i in chosen if i in by_id])
    labels = {i: run_option(r) for i, r in by_id.items()}
    # The multiselect tells options apart by label: a run imported twice must not share its copy's.
    repeated = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    shown = st.multiselect("Runs to show (your runs and earlier ones, including command-line runs)", list(by_id),
                           default=[i for i in dict.fromkeys(st.session_state[keys.EXP_SHOWN]) if i in by_id],
                           key=picker_key(),
                           format_func=lambda i: f"{labels[i]} · {i}" if labels[i] in repeated else labels[i],
                           placeholder="Pick finished runs from the runs folder")
    st.session_state[keys.EXP_SHOWN] = list(shown)
    if listing.incomplete:
        with st.expander(f"{len(listing.incomplete)} unfinished or damaged run folder(s), not shown"):
            st.caption("A run is written into a hidden folder and renamed when complete; these never completed "
                       "or are missing files.")
            st.code("\n".join(p.name for p in listing.incomplete), language=None)
    return sorted((by_id[i] for i in shown),
                  key=lambda r: (ORDER.get(r.model_kind, len(ORDER)), r.metrics.get("finished_at", 0)))


# A finished run never changes: the curves of a selection are built once and shared, as the same figure objects,
# by every session showing it (a room's sessions following one job show the same runs the moment it ends, and
# each figure takes tens of milliseconds of the server's interpreter). Nothing mutates them.
@st.cache_resource(show_spinner=False, max_entries=64)
def _result_curves(key: tuple, _items: list, show_article: bool, show_reference: bool):
    series = curve_series(_items)
    return (training_curves(series, "accuracy", show_article, show_reference),
            training_curves(series, "loss", show_article, show_reference))


def show_curves(records) -> None:
    multiple = {k: sum(1 for r in records if r.model_kind == k) > 1 for k in {r.model_kind for r in records}}
    items = [(run_title(r) if multiple[r.model_kind] else r.model_name, model_kind(r.model_kind), r.history)
             for r in records]
    key = tuple((label, str(kind), str(r.path), r.metrics.get("finished_at"), len(r.history))
                for (label, kind, _), r in zip(items, records))
    accuracy, loss = _result_curves(key, items, st.session_state.get(keys.EXP_SHOW_ARTICLE, True),
                                    st.session_state.get(keys.EXP_SHOW_REFERENCE, True))
    left, right = st.columns(2, gap="medium")
    left.plotly_chart(accuracy, key=keys.RESULTS_ACC_CHART)
    right.plotly_chart(loss, key=keys.RESULTS_LOSS_CHART)


def show_comparison(records, include_article: bool) -> None:
    _, rows = compare_rows(records)
    for row, record in zip(rows, records):
        row[0], row[1] = run_time(record), record.model_name
    if include_article:
        rows += article_rows()
    # A lone hyphen in a table cell would render as a bullet.
    st.table([dict(zip(COLUMNS, ["–" if c == "-" else c for c in row])) for row in rows], hide_index=True,
             border="horizontal")


def show_summary(record) -> None:
    m = record.metrics
    st.markdown(chip(record.model_kind) + f" &nbsp; <small>{markdown_literal(run_time(record))}</small>",
                unsafe_allow_html=True)
    a, b = st.columns(2)
    a.metric("Total parameters", f"{m.get('total_params', 0):,}")
    b.metric("Trainable", f"{m.get('trainable_params', 0):,}")
    rows = layer_rows(record, compact_shape)
    if rows is None:
        st.code(record.summary or "No layer summary in this run folder.", language=None)
    else:
        st.dataframe(rows, hide_index=True, width="stretch")


def _in_pairs(records, draw) -> None:
    for start in range(0, len(records), 2):
        for column, record in zip(st.columns(2, gap="large"), records[start:start + 2]):
            with column:
                draw(record)


def _headed(draw):
    def drawn(record) -> None:
        st.markdown(chip(record.model_kind) + f" &nbsp; <small>{markdown_literal(run_time(record))}</small>",
                    unsafe_allow_html=True)
        draw(record)
    return drawn


def _checked_and_evaluated(record) -> None:
    show_reload_check(record)  # the article's last step: the .h5 reloaded gives the same predictions
    show_evaluation(record)


def results() -> None:
    st.header("Results")
    records = pick_runs()
    import_section()
    toggles = st.columns([1, 1, 2])
    toggles[0].toggle("Article's curves", key=keys.EXP_SHOW_ARTICLE, help="Its per-epoch validation curves, faint.")
    toggles[1].toggle("Article's reported accuracy", key=keys.EXP_SHOW_REFERENCE,
                      help="About 88% for the baseline and 98% for the transfer model, as lines.")
    if not records:
        st.info("No runs selected. Run an experiment above, or pick earlier runs from the runs folder.",
                icon=":material/info:")
        return
    try:
        show_curves(records)
        st.subheader("Comparison")
        show_comparison(records, st.session_state.get(keys.EXP_SHOW_ARTICLE, True))
        st.subheader("Model summaries")
        _in_pairs(records, show_summary)
    except (LabError, TypeError, ValueError) as exc:  # a damaged run must not take the page down
        show_error(exc)
    st.subheader("Evaluation on the validation split")
    st.caption("Each run's saved model on the images it was validated on. In the confusion matrix rows are the true "
               "class and columns the predicted one; the diagonal holds the right answers.")
    _in_pairs(records, _headed(_checked_and_evaluated))
    st.subheader("Export")
    st.caption(EXPORT_GUIDE)
    _in_pairs(records, _headed(show_exports))
