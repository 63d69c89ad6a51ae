"""The Experiments page's "Running now" panel: every training on this server, live, with Stop and a link.

Trainings run in worker processes (core.training.board); this panel only reads what they publish, once a
second, in a fragment that redraws itself alone. The curves have a fragment of their own that redraws
every few seconds, since drawing them is what costs the server and the browser most.
"""
from __future__ import annotations

import streamlit as st

from app_pages.parts import session_keys as keys
from app_pages.parts.common import describe_source, runs_folder, session_token
from core.present.charts import CurveSeries, training_curves
from core.present.labels import job_status_line
from core.settings.presets import active_preset

WATCHING, OTHERS, IDLE = "watching", "others", "idle"
POLL_SECONDS = {WATCHING: 2.0, OTHERS: 5.0, IDLE: 30.0}
CURVES_SECONDS = 5.0
# The pages of this server share one read of the board for this long (LAB_BOARD_READ_SECONDS, 0 = none):
# each polls every 2 s or slower.
BOARD_READ_SECONDS = 1.0
# Other visitors' waiting trainings shown as cards; the rest of a room's queue is one line.
OTHERS_WAITING_SHOWN = 2
# From a job's end to "Finished" on the page of the person who started it: half a poll on average, then the
# page's redraw with the new runs (about a second here). The Quick demo counts it in the wait it promises.
FINISH_SEEN_SECONDS = POLL_SECONDS[WATCHING] / 2 + 1.0


def board():
    import os

    from core.training.board import Board

    # A warm worker waits for the next training (LAB_WARM_WORKER=0 turns it off, e.g. for in-process tests).
    try:
        shared = float(os.environ.get("LAB_BOARD_READ_SECONDS", BOARD_READ_SECONDS))
    except ValueError:
        shared = BOARD_READ_SECONDS
    return Board(runs_folder(), warm_worker=os.environ.get("LAB_WARM_WORKER", "1") != "0",
                 shared_reads_seconds=shared)


def following() -> list[str]:
    return list(st.session_state.get(keys.EXP_FOLLOWING, []))


def follow(job_id: str) -> None:
    st.session_state[keys.EXP_FOLLOWING] = [j for j in following() if j != job_id][-9:] + [job_id]


def submit(experiments: list, owner: str, short: bool = False):
    """Queue experiments (core.training.jobs.Experiment) as one job, trained in that order, and follow it.

    What every page's training goes through: each experiment fingerprinted (one trained here already is
    handed back, an identical job joined), the worker's start counted in the first estimate, and the
    preset's cap on a training's length checked, unless the caller's limits keep it short whatever the
    settings (short: Your classes' few images, a head on cached features) and no estimate is needed.
    Returns the board's Submission; LabError says why not.
    """
    import dataclasses

    from app_pages.parts.common import open_source_cached
    from core.models.hub import check_web_handle
    from core.settings.config import spec, validate
    from core.settings.presets import check_job_length
    from core.training.board import experiment_fingerprint, worker_start_seconds

    for e in experiments:
        validate(e.data, e.train)
        if spec(e.train.model).has_backbone and not active_preset().allow_local_paths:
            check_web_handle(e.train.handle)  # a hosted Lab's hub handle names downloads and its own cache only
    fingerprints = [experiment_fingerprint(open_source_cached(e.data.source), e.data, e.train) for e in experiments]
    if experiments[0].estimated_seconds is not None:  # the worker's start belongs to the job's first run
        experiments = [dataclasses.replace(experiments[0], estimated_seconds=experiments[0].estimated_seconds
                                           + worker_start_seconds(runs_folder())), *experiments[1:]]
    if active_preset().max_job_minutes is not None and not short:
        known = [e.estimated_seconds for e in experiments]
        check_job_length(sum(known) if None not in known else None)
    submission = board().submit(experiments, fingerprints, owner=owner)
    if submission.job_id:
        follow(submission.job_id)
    return submission


def own_active_job(views) -> bool:
    return any(v.active and (v.job_id in following() or v.owner == session_token()) for v in views)


def may_stop(view) -> bool:
    # On a shared host a stranger's training is theirs to stop; on one's own machine anyone may.
    return active_preset().allow_local_paths or view.owner == session_token()


def _stop(job_id: str) -> None:
    from core.settings.errors import LabError

    try:
        board().stop(job_id)
    except LabError as exc:  # a full or read-only runs folder: one line on the card, never a traceback
        st.session_state[keys.PANEL_STOP_ERROR] = (job_id, str(exc))
        return
    st.session_state[keys.EXP_STOPPING] = [*st.session_state.get(keys.EXP_STOPPING, []), job_id]


def _job_card(view, mine: bool) -> None:
    snap = view.snapshot
    stopping = view.job_id in st.session_state.get(keys.EXP_STOPPING, []) and not snap.finished
    stoppable = may_stop(view) and not snap.finished
    with st.container(border=True):
        # Columns only for a Stop button: a room's pages redraw every card they show every few seconds.
        head, stop = st.columns([5, 1], vertical_alignment="center") if stoppable else (st, None)
        who = "yours" if view.owner == session_token() else ("from the command line" if view.origin == "cli"
                                                              else "another visitor's")
        names = view.title.split(", then ")
        model = names[snap.index] if snap.model and snap.index < len(names) else view.title
        head.markdown(f"**{model}**" + (f" ({snap.index + 1} of {snap.total})" if snap.total > 1 and snap.model
                                        else "") + f" · {who}")
        head.caption(f"{view.title} on {describe_source(view.source)}")
        if stoppable:
            stop.button("Cancel" if view.queued else "Stop", key=keys.STOP_BUTTON.key(view.job_id), icon=":material/stop_circle:",
                        on_click=_stop, args=(view.job_id,), disabled=stopping, width="stretch",
                        help="Stops after the current batch; finished epochs are saved as a run.")
        line = "Stopping after the current batch ..." if stopping and not view.queued else job_status_line(view)
        st.progress(min(1.0, max(0.0, snap.fraction)), text=line)
        failed = st.session_state.get(keys.PANEL_STOP_ERROR)
        if failed and failed[0] == view.job_id:
            st.error(failed[1], icon=":material/error:")
        if mine and snap.run_dirs and not snap.finished:
            done = ", ".join(names[:len(snap.run_dirs)])
            st.caption(f":material/check_circle: {done} finished: on the charts below while the rest trains.")
        if mine and not view.queued:
            a, b = st.columns(2)
            from core.training.board import TRAIN_TASK

            done = "Epochs" if view.task == TRAIN_TASK else "Trainings"  # a measurement trains two per count
            a.caption(f"{done} done: {snap.epoch} of {snap.epochs}")
            b.markdown(f"[Link to this training](?job={view.job_id})", help="Anyone with this link sees its "
                       "progress; only you (or anyone on a local Lab) can stop it.")


# Built once per set of finished epochs and shared by every watcher, as the same figure objects (a figure
# takes ~60 ms to build; st.cache_data would also copy it, ~30 ms each, on every watcher's every redraw).
# Nothing mutates them: plotly_chart serialises a copy.
@st.cache_resource(show_spinner=False, max_entries=64)
def _curves(histories: tuple):
    items = [CurveSeries(f"{name} (this run)", kind, list(rows)) for name, kind, rows in histories if rows]
    return training_curves(items, "accuracy", False, True), training_curves(items, "loss", False, True)


def live_curves() -> None:
    """The followed trainings' curves, every 5 s while one of them trains (an epoch rarely takes less, and
    drawing costs), and never polled otherwise. Called after running_now, which has just set the level."""
    watching = st.session_state.get(keys.EXP_PANEL_LEVEL) == WATCHING
    st.fragment(run_every=CURVES_SECONDS if watching else None)(_live_curves)()


def _live_curves() -> None:
    views = [v for v in (board().view(j) for j in following()) if v is not None and v.active and not v.queued]
    if not views:
        return
    histories = tuple((name, kind, tuple(rows)) for v in views
                      for name, (kind, rows) in zip(v.title.split(", then "), v.snapshot.histories))
    if not any(rows for _, _, rows in histories):
        st.caption("The loss and accuracy curves appear here after the first epoch.")
        return
    accuracy, loss = _curves(histories)
    left, right = st.columns(2, gap="medium")
    left.plotly_chart(accuracy, key=keys.LIVE_ACC_CHART)
    right.plotly_chart(loss, key=keys.LIVE_LOSS_CHART)


def _outcome(view) -> None:
    """How the latest followed training ended, until the next one starts."""
    from core.training.jobs import DONE, FAILED

    message = view.snapshot.message
    if view.snapshot.phase == DONE:
        st.success(message, icon=":material/check_circle:")
    elif view.snapshot.phase == FAILED:
        st.error(message, icon=":material/error:")
    else:
        st.warning(message, icon=":material/stop_circle:")


def _followed(b) -> list:
    return [v for v in (b.view(j) for j in following()) if v is not None]


def _level(followed: list, active: list) -> str:
    """How closely this session needs to follow the board: its own (or joined) training runs, only other
    people's do, or nothing trains on the server."""
    if any(v.active and not v.queued for v in followed):
        return WATCHING
    # A place in the queue changes only when a job ahead ends: a room waiting in line polls at the slower rate.
    return OTHERS if active else IDLE


def running_now() -> None:
    """Every unfinished training on the server, this session's first; a full rerun when one of its ends.

    Polled every 2 s while the session's own training runs: often enough to follow a batch counter,
    rarely enough that a room full of watchers leaves the training its processor (measured: a watching
    page costs the server and its browser about 6% of one core each at this rate). Slower when only
    other people's trainings run, and every 30 s on an idle server, so that twenty open pages do not keep
    a server busy with nothing to show; a change of level reruns the page to poll at the new rate.
    """
    b = board()
    active = b.active()
    b.keep_warm(active)  # whoever presses Run next finds TensorFlow started
    level = _level(_followed(b), active)
    st.session_state[keys.EXP_PANEL_LEVEL] = level
    st.fragment(run_every=POLL_SECONDS[level])(_running_now)()


def _running_now() -> None:
    b = board()
    active = b.active()
    if active and b.pump_if_due():
        active = b.active()  # the pump may have failed a dead job or started a queued one
    followed = _followed(b)
    if deliver(followed):
        st.rerun()  # the whole page: its results now include the new runs
    if _level(followed, active) != st.session_state.get(keys.EXP_PANEL_LEVEL):
        st.rerun()  # the whole page, to poll at the rate the new level needs
    if followed and followed[-1].finished:
        _outcome(followed[-1])
    mine = [v for v in followed if v.active]
    followed_ids = {v.job_id for v in followed}
    others = [v for v in active if v.job_id not in followed_ids]
    if not mine and not others:
        return
    st.subheader("Running now", anchor=False)
    for view in mine:
        _job_card(view, mine=True)
    waiting = [v for v in others if v.queued]
    for view in [v for v in others if not v.queued] + waiting[:OTHERS_WAITING_SHOWN]:
        _job_card(view, mine=False)
    if len(waiting) > OTHERS_WAITING_SHOWN:
        st.caption(f"and {len(waiting) - OTHERS_WAITING_SHOWN} more of other visitors' trainings waiting in line.")


def deliver(followed: list) -> bool:
    """Put every run that a followed job has saved and this session has not yet charted on the charts, the
    moment it is saved (with "Run both", the first model's while the second trains). True if any was new,
    or a followed job has ended since this session last looked."""
    from app_pages.parts.results import show_runs_next

    delivered = list(st.session_state.get(keys.EXP_DELIVERED, []))
    fresh = [v for v in followed if any(p.name not in delivered for p in v.snapshot.run_dirs)]
    seen_ended = list(st.session_state.get(keys.EXP_SEEN_ENDED, []))
    ended = [v.job_id for v in followed if v.finished and v.job_id not in seen_ended]
    if ended:
        st.session_state[keys.EXP_SEEN_ENDED] = (seen_ended + ended)[-20:]
    if not fresh:
        return bool(ended)
    # The charts show what was just asked for: the job's runs so far and those handed back with it.
    runs = [p.name for p in fresh[-1].snapshot.run_dirs]
    show_runs_next(st.session_state.get(keys.EXP_REUSED, []) + runs)
    st.session_state[keys.EXP_DELIVERED] = (delivered + [p.name for v in fresh for p in v.snapshot.run_dirs
                                                    if p.name not in delivered])[-40:]
    return True


def show_shared_job(job_id: str) -> None:
    """A link's job: follow it, so the panel shows it like one's own (Stop stays with its owner)."""
    if job_id and job_id not in following() and board().view(job_id) is not None:
        follow(job_id)
