"""Short texts the dashboard shows about runs, estimates and training jobs; no Streamlit here."""
from __future__ import annotations

import time

from core.settings.text import duration, is_number, percent


def run_time(record) -> str:
    finished = record.metrics.get("finished_at")
    if is_number(finished) and 0 < finished < 4e9:
        return time.strftime("%d %b %H:%M", time.localtime(finished))
    return record.run_id


def run_title(record) -> str:
    return f"{record.model_name} · {run_time(record)}"


def run_option(record) -> str:
    """One line per run in a picker: model, time, epochs, best validation accuracy."""
    acc = record.metrics.get("best_val_accuracy")
    acc_text = f", best val {percent(acc)}" if isinstance(acc, (int, float)) else ""
    stopped = ", stopped early" if record.metrics.get("stopped_early") else ""
    return f"{run_title(record)} ({len(record.history)} epochs{acc_text}{stopped})"


def compact_shape(shape) -> str:
    """'(batch, 62, 62, 32)' -> '62×62×32': narrow enough for two tables side by side."""
    parts = [p.strip() for p in str(shape).strip("()[] ").split(",") if p.strip() and p.strip() not in ("batch", "None")]
    return "×".join(parts) if parts else str(shape)


def estimate_details(est) -> str:
    """What an estimate is made of, e.g. 'setup 6 s, features 12 s, 3 epochs × under 1 s'."""
    parts = [f"setup {duration(est.setup_seconds)}"]
    if est.feature_seconds:
        parts.append(f"features {duration(est.feature_seconds)}")
    parts.append(f"{est.epochs} epoch{'s' if est.epochs > 1 else ''} × {duration(est.epoch_seconds)}")
    if est.fine_tune_epochs:
        parts.append(f"fine-tuning {duration(est.fine_tune_seconds)} for {est.fine_tune_epochs} "
                     f"epoch{'s' if est.fine_tune_epochs > 1 else ''}")
    return (f"{est.train_images:,} training and {est.val_images:,} validation images; {', '.join(parts)}. "
            f"{estimate_source(est)}.")


def estimate_source(*estimates) -> str:
    """Where estimates' figures come from: runs of the same setting that finished here, or batches timed now."""
    runs = [e.observed_runs for e in estimates if e.observed_runs]
    if not runs:
        return "From a few batches timed on this server; the first finished run of the same setting refines it"
    if len(runs) < len(estimates):
        return "Partly from runs of the same setting that finished on this server, partly from batches timed now"
    if len(runs) > 1:
        return "From what earlier runs of the same settings took on this server"
    return f"From what {runs[0]} finished run{'s' if runs[0] > 1 else ''} of the same setting took on this server"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def job_status_line(view) -> str:
    """Where a job stands, in one line: its place in the queue, or its progress and time left."""
    snap = view.snapshot
    if view.queued:
        wait = f"; starts in about {duration(view.wait_seconds)}" if view.wait_seconds is not None else ""
        return f"Waiting: {ordinal(view.queue_position)} in line{wait}."
    if snap.finished:
        return snap.message
    left = f" · about {duration(snap.eta_seconds)} left" if snap.eta_seconds is not None else ""
    return f"{snap.message} · {duration(snap.elapsed_seconds)} so far{left}"
