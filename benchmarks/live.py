"""Live training as people see it: figures measured with `streamlit run` and headless Chromium.

W1  watched / unwatched throughput: "Run both" with the Experiments page open in Chromium against the same
    experiment submitted with no page attached (other seeds, so nothing is reused), interleaved.
W2  Stop: from the click to "Stopping ..." on the page, to the worker's last batch, and to "Stopped".
W3  Quick demo: the time from "Run both" to "Finished" on the page against the budget and the estimate, on
    a setting the server never trained (estimated from timed batches) and again (from the first runs).
L1  load: browser sessions on the hosted preset start the same few experiments at once while one more
    session predicts; every session gets a result or a queue place, each distinct experiment trains
    once, server + workers stay within the host's memory, prediction latency stays low.

`python -m benchmarks --live` runs them (several minutes); results go to benchmarks/live-results.json.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHROMIUM = "/usr/bin/chromium"
# Visitors' browsers run on their own machines, not on the server: here every Chromium process runs at the
# training workers' niceness, so 20 pages redrawing on the same 2 cores do not take the server's place.
BROWSER_NICENESS = 10
TIMEOUT_MS = 300_000
HOST_MEMORY_GB = 2.7


def _server(runs: Path, env: dict):
    from benchmarks.server import start_server

    return start_server(runs, env, "benchmark-live-server")


def _context(browser, url: str, token: str, width: int = 1440):
    context = browser.new_context(viewport={"width": width, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(f"{url}/experiments?s={token}")
    tab.get_by_role("heading", name="Experiments", exact=True).first.wait_for()
    tab.get_by_role("button", name=re.compile("^Run both")).wait_for()
    tab.wait_for_timeout(500)
    return context, tab


def _session(choices: dict) -> str:
    from core.settings.choices import new_token, save_choices

    token = new_token()
    save_choices(token, choices)
    return token


def _job_seconds(runs: Path, job_id: str) -> dict:
    status = json.loads((runs / ".jobs" / job_id / "status.json").read_text())
    epochs = sum(row["seconds"] for _, rows in status["histories"] for row in rows)
    return {"job_s": status["elapsed_seconds"], "epochs_s": epochs, "phase": status["phase"]}


def _newest_job(runs: Path, before: set[str]) -> str:
    deadline = time.monotonic() + 60
    while True:
        jobs = {p.name for p in (runs / ".jobs").iterdir() if p.is_dir() and not p.name.startswith(".")}
        if jobs - before:
            return max(jobs - before)
        if time.monotonic() > deadline:
            raise RuntimeError("no job appeared")
        time.sleep(0.1)


def _jobs(runs: Path) -> set[str]:
    root = runs / ".jobs"
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")} if root.is_dir() else set()


def _experiments(choices: dict):
    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.training.jobs import Experiment

    out = []
    for kind, p in ((ModelKind.BASELINE, "exp_b_"), (ModelKind.TRANSFER, "exp_t_")):
        data = DataConfig(source=choices["lab_source"], image_size=choices["exp_image_size"],
                          batch_size=choices[p + "batch"], limit=choices[p + "limit"] or None,
                          seed=choices["exp_seed"])
        out.append(Experiment(data, TrainConfig(model=kind, epochs=choices[p + "epochs"],
                                                learning_rate=choices.get(p + "lr", 1e-3),
                                                handle=choices["lab_handle"])))
    return out


def w1_watched(browser, url: str, runs: Path, choices: dict, say, repeats: int = 2) -> dict:
    from core.training.board import Board

    board = Board(runs, max_concurrent=1)
    watched, unwatched = [], []
    for i in range(repeats):
        seed = 100 + 2 * i
        say(f"W1: unwatched run {i + 1} (no page attached) ...")
        sub = board.submit(_experiments(dict(choices, exp_seed=seed)), [f"w1-u-{seed}-b", f"w1-u-{seed}-t"],
                           owner="benchmark")
        while not board.view(sub.job_id).finished:
            time.sleep(0.5)
        unwatched.append(_job_seconds(runs, sub.job_id))
        say(f"W1: watched run {i + 1} (Experiments page open in Chromium) ...")
        context, tab = _context(browser, url, _session(dict(choices, exp_seed=seed + 1)))
        before = _jobs(runs)
        tab.get_by_role("button", name=re.compile("^Run both")).click()
        job = _newest_job(runs, before)
        tab.get_by_text(re.compile(r"Finished: \d run")).wait_for()
        watched.append(_job_seconds(runs, job))
        context.close()
    ratio = statistics.mean(u["job_s"] for u in unwatched) / statistics.mean(w["job_s"] for w in watched)
    return {"ratio": ratio, "goal": 0.9, "met": ratio >= 0.9, "watched": watched, "unwatched": unwatched}


def w2_stop(browser, url: str, runs: Path, choices: dict, say) -> dict:
    say("W2: Stop latency ...")
    context, tab = _context(browser, url, _session(dict(choices, exp_seed=300, exp_b_epochs=500)))
    before = _jobs(runs)
    tab.get_by_role("button", name="Run Baseline CNN").click()
    job = _newest_job(runs, before)
    tab.get_by_text(re.compile(r"Epochs done: [2-9]")).wait_for()
    status_file = runs / ".jobs" / job / "status.json"
    clicked = time.monotonic()
    tab.get_by_role("button", name="Stop").click()
    tab.get_by_text("Stopping after the current batch").first.wait_for()
    shown = time.monotonic() - clicked
    # The worker's last batch: the published step stops moving once training has left its loop.
    last, halted = None, None
    while halted is None:
        status = json.loads(status_file.read_text())
        key = (status["epoch"], status["step"])
        if status["phase"] != "training" or (last == key and time.monotonic() - clicked > 0.3):
            halted = time.monotonic() - clicked
        last = key
        time.sleep(0.05)
    tab.get_by_text(re.compile(r"Stopped after \d+ epoch")).wait_for()
    stopped = time.monotonic() - clicked
    context.close()
    return {"click_to_stopping_shown_s": shown, "click_to_training_halted_s": halted,
            "click_to_stopped_shown_s": stopped, "goal_s": 2.0, "met": halted <= 2.0}


def w3_quick_demo(browser, url: str, runs: Path, choices: dict, say, budget_min: float) -> dict:
    """The Quick demo twice on a setting this server never trained: the first estimate comes from batches
    timed in the server, the second (another seed) from what the first runs took."""
    passes = []
    for name, seed in (("first", 400), ("again", 401)):
        say(f"W3: Quick demo with a {budget_min:g}-minute budget ({name}) ...")
        passes.append(dict(_quick_demo_pass(browser, url, dict(choices, exp_seed=seed), budget_min), name=name))
    return {"passes": passes, "met": all(p["met"] for p in passes)}


def _quick_demo_pass(browser, url: str, choices: dict, budget_min: float) -> dict:
    context, tab = _context(browser, url, _session(dict(choices, exp_budget_min=budget_min, exp_b_limit=0,
                                                        exp_t_limit=0)))
    tab.get_by_role("button", name="Quick demo").click()
    notice = tab.get_by_text(re.compile(r"^Quick demo: ")).first
    notice.wait_for()
    text = notice.inner_text()
    match = re.search(r"about ((\d+) min )?(\d+) s|about (\d+) min", text)
    estimate = None
    if match:
        if match.group(4):
            estimate = int(match.group(4)) * 60
        else:
            estimate = int(match.group(2) or 0) * 60 + int(match.group(3))
    tab.get_by_role("button", name=re.compile("^Run both")).wait_for()
    tab.wait_for_timeout(1000)
    start = time.monotonic()
    tab.get_by_role("button", name=re.compile("^Run both")).click()
    tab.get_by_text(re.compile(r"Finished: \d run")).wait_for()
    actual = time.monotonic() - start
    context.close()
    budget = budget_min * 60
    error = (actual - estimate) / estimate if estimate else None
    return {"budget_s": budget, "estimate_s": estimate, "actual_s": actual, "actual_over_budget": actual / budget,
            "estimate_error": error, "notice": text,
            "met": actual <= budget and error is not None and abs(error) <= 0.15}


def l1_load(browser, url: str, runs: Path, choices: dict, server_pid: int, say, sessions: int, distinct: int,
            image: Path) -> dict:
    import psutil

    say(f"L1: {sessions} sessions on the hosted preset, {distinct} distinct experiments, one predicting ...")
    peak = {"gb": 0.0}
    done = threading.Event()

    def sample() -> None:
        server = psutil.Process(server_pid)
        while not done.is_set():
            try:
                procs = [server, *server.children(recursive=True)]
                from core.training.board import Board

                for view in Board(runs, max_concurrent=1).active():
                    launch = view.path / "launch.json"
                    if launch.exists():
                        pid = json.loads(launch.read_text()).get("pid")
                        if pid and psutil.pid_exists(pid) and pid not in {p.pid for p in procs}:
                            procs.append(psutil.Process(pid))
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                peak["gb"] = max(peak["gb"], total / 1e9)
            except (psutil.Error, OSError, ValueError):
                pass
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    before = _jobs(runs)
    tabs = []
    for i in range(sessions):
        tabs.append(_context(browser, url, _session(dict(choices, exp_seed=500 + i % distinct)), width=1100))
    outcomes = []
    for _, tab in tabs:
        tab.get_by_role("button", name=re.compile("^Run both")).click()
    for _, tab in tabs:
        tab.get_by_text(re.compile(r"(Waiting: \d+\w\w in line|Epoch|Opening|Starting|following it|trained here "
                                   r"already)")).first.wait_for()
        outcomes.append("ok")
    # One more visitor predicts with a saved run while all this trains.
    predict_context = browser.new_context()
    predict = predict_context.new_page()
    predict.set_default_timeout(TIMEOUT_MS)
    predict.goto(f"{url}/predict")
    try:
        predict.get_by_text("Loaded from disk").or_(predict.get_by_text("Reused from the shared cache")).first.wait_for()
    except Exception:
        predict.screenshot(path=str(HERE / "work" / "l1-predict.png"), full_page=True)
        raise
    latencies = []
    for i in range(10):
        start = time.monotonic()
        predict.locator("input[type=file]").first.set_input_files(str(image))
        predict.get_by_text(re.compile(r"confident")).first.wait_for()
        latencies.append(time.monotonic() - start)
        predict.reload()
        predict.get_by_text("Loaded from disk").or_(predict.get_by_text("Reused from the shared cache")).first.wait_for()
    finished = []
    for i, (_, tab) in enumerate(tabs):
        # Each session ends with its own result: the job it started or joined finished, or a run handed back.
        try:
            tab.get_by_text(re.compile(r"Finished: \d run|trained here already")).first.wait_for()
        except Exception:
            tab.screenshot(path=str(HERE / "work" / f"l1-session-{i}.png"), full_page=True)
            raise
        finished.append(True)
    done.set()
    sampler.join(2)
    new_jobs = sorted(_jobs(runs) - before)
    run_dirs = [d for j in new_jobs for d in json.loads((runs / ".jobs" / j / "status.json").read_text())["run_dirs"]]
    for context, _ in tabs:
        context.close()
    predict_context.close()
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 2 else latencies[0]
    return {"sessions": sessions, "distinct_experiments": distinct, "jobs_trained": len(new_jobs),
            "runs_written": len(run_dirs), "runs_exist": all(Path(d).is_dir() for d in run_dirs),
            "every_session_answered": len(outcomes) == sessions and len(finished) == sessions,
            "peak_rss_gb": peak["gb"], "predict_p95_s": p95, "predict_latencies_s": latencies,
            "met": len(new_jobs) == distinct and len(run_dirs) == 2 * distinct and peak["gb"] < HOST_MEMORY_GB
            and p95 <= 2.0}


def _niced_chromium(work: Path, niceness: int = BROWSER_NICENESS) -> Path:
    """A launcher that starts Chromium (and so every process it forks) at this niceness."""
    launcher = work / f"chromium-niced-{niceness}"
    launcher.write_text(f'#!/bin/sh\nexec nice -n {niceness} {CHROMIUM} "$@"\n')
    launcher.chmod(0o755)
    return launcher


# A switch Chromium ignores, marking a browser that browsers_kept_niced leaves at its own priority.
SPARED_SWITCH = "--lab-benchmark-own-device"


@contextlib.contextmanager
def browsers_kept_niced(niceness: int):
    """While the block runs, every Chromium process under this one stays at this niceness: Chromium raises
    some of its own processes' priority (the browser and GPU processes end up below 0 when it may, as root
    here), and a room's 30 pages would then take the training worker's place on the server's cores."""
    import psutil

    stop = threading.Event()

    def spared(procs) -> set[int]:
        """A browser launched with SPARED_SWITCH (a visitor's own device) and everything it forked."""
        found: set[int] = set()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                if SPARED_SWITCH in proc.cmdline():
                    found |= {proc.pid} | {child.pid for child in proc.children(recursive=True)}
        return found

    def keep() -> None:
        me = psutil.Process()
        while not stop.is_set():
            procs = me.children(recursive=True)
            skip = spared(procs)
            for proc in procs:
                with contextlib.suppress(psutil.Error, OSError):
                    if proc.pid not in skip and "chrom" in proc.name():
                        if proc.nice() < niceness:
                            proc.nice(niceness)
                        if proc.pid == os.getsid(proc.pid):
                            # Playwright starts the browser in a session of its own: under the kernel's
                            # autogroup scheduling its processes' nice values count only among themselves,
                            # and the group as a whole would take as much of the cores as the server's.
                            Path(f"/proc/{proc.pid}/autogroup").write_text(str(niceness))
            stop.wait(0.5)

    thread = threading.Thread(target=keep, name="browsers-niced", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def main(work: Path, quick: bool, say, only: set[str] | None = None) -> dict:
    """The live figures (only those named in `only`, default all) in one dict by name."""
    only = only or {"W1", "W2", "W3", "L1"}
    import psutil  # noqa: F401  (the load figure samples memory with it)
    from playwright.sync_api import sync_playwright

    from core.data.demo import make_demo_backbone, make_demo_folder

    cache = work / "live-cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["LAB_CACHE_DIR"] = str(cache)
    os.environ["TFHUB_CACHE_DIR"] = str(cache / "tfhub")
    data = make_demo_folder(cache / "uploads" / "shapes", per_class=100, size=(128, 128))
    handle = make_demo_backbone(cache / "demo" / "backbone")
    choices = {"lab_source": f"folder:{data}", "lab_handle": str(handle), "exp_t_handle": str(handle),
               "exp_image_size": 96, "exp_b_batch": 16, "exp_t_batch": 16, "exp_b_limit": 0, "exp_t_limit": 0,
               "exp_b_epochs": 2, "exp_t_epochs": 2, "exp_t_lr": 0.01, "exp_seed": 1}
    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(_niced_chromium(work)),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        if only & {"W1", "W2", "W3"}:
            runs = work / "live-runs-local"
            shutil.rmtree(runs, ignore_errors=True)
            with _server(runs, {"LAB_PRESET": "local"}) as url:
                # W1 on the scenario where watching once cost 5.6x: 200 images, 2 + 2 epochs at the article's 224 px.
                if "W1" in only:
                    results["W1"] = _figure(say, w1_watched, browser, url, runs, dict(choices, exp_image_size=224),
                                            say, repeats=1 if quick else 2)
                if "W2" in only:
                    results["W2"] = _figure(say, w2_stop, browser, url, runs, choices, say)
                if "W3" in only:
                    results["W3"] = _figure(say, w3_quick_demo, browser, url, runs, choices, say,
                                            budget_min=0.5 if quick else 1.5)
        if "L1" in only:
            runs = work / "live-runs-cloud"
            shutil.rmtree(runs, ignore_errors=True)
            image = next((data / "circles").iterdir())
            with _server(runs, {"LAB_PRESET": "cloud"}) as url:
                # A saved run for the predicting visitor, trained before the crowd arrives.
                from core.training.board import Board

                board = Board(runs, max_concurrent=1)
                sub = board.submit(_experiments(dict(choices, exp_seed=9, exp_b_epochs=1, exp_t_epochs=1)),
                                   ["l1-seed-b", "l1-seed-t"], owner="benchmark")
                while not board.view(sub.job_id).finished:
                    time.sleep(0.5)
                server_pid = _server_pid(url)
                results["L1"] = _figure(say, l1_load, browser, url, runs,
                                        dict(choices, exp_b_epochs=1, exp_t_epochs=1), server_pid, say,
                                        sessions=4 if quick else 20, distinct=2 if quick else 4, image=image)
        browser.close()
    return results


def _figure(say, measure, *args, **kwargs) -> dict:
    """One figure, or what stopped it: a figure that fails is reported, and the others are still measured."""
    try:
        result = measure(*args, **kwargs)
    except Exception as exc:
        say(f"  failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
        return {"error": f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}", "met": False}
    say(f"  {json.dumps({k: v for k, v in result.items() if not isinstance(v, (list, dict))})[:400]}")
    return result


def _server_pid(url: str) -> int:
    import psutil

    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return conn.pid
    raise RuntimeError("the server's process was not found")


def _w1_row(w1: dict) -> list[str]:
    return ["W1", "watched / unwatched throughput", f"{w1['ratio']:.2f}", ">= 0.9", _yes(w1["met"]),
            "job seconds watched {} / unwatched {}".format("+".join(f"{w['job_s']:.1f}" for w in w1["watched"]),
                                                           "+".join(f"{u['job_s']:.1f}" for u in w1["unwatched"]))]


def _w2_row(w2: dict) -> list[str]:
    return ["W2", "Stop: click to training halted", f"{w2['click_to_training_halted_s']:.2f} s", "<= 2 s",
            _yes(w2["met"]), (f"'Stopping' shown after {w2['click_to_stopping_shown_s']:.2f} s; 'Stopped' (run "
                              f"saved) after {w2['click_to_stopped_shown_s']:.1f} s")]


def _w3_row(w3: dict) -> list[str]:
    def error(p: dict) -> str:
        return f"{p['estimate_error']:+.0%}" if p["estimate_error"] is not None else "-"

    detail = "; ".join(f"{p['name']}: {p['actual_s']:.0f} s of {p['budget_s']:.0f} s, estimate {p['estimate_s']} s, "
                       f"error {error(p)}" for p in w3["passes"])
    worst = max(p["actual_over_budget"] for p in w3["passes"])
    return ["W3", "Quick demo: actual / budget", f"{worst:.2f}", "<= 1.0; ±15%", _yes(w3["met"]), detail]


def _l1_row(l1: dict) -> list[str]:
    return ["L1", f"{l1['sessions']} sessions, {l1['distinct_experiments']} distinct", f"{l1['jobs_trained']} jobs",
            f"= {l1['distinct_experiments']}", _yes(l1["met"]),
            (f"{l1['runs_written']} runs; peak RSS {l1['peak_rss_gb']:.2f} GB (< {HOST_MEMORY_GB}); predict p95 "
             f"{l1['predict_p95_s']:.2f} s")]


def _yes(met: bool) -> str:
    return "yes" if met else "no"


def table_rows(figures: dict) -> list[list[str]]:
    rows = {"W1": _w1_row, "W2": _w2_row, "W3": _w3_row, "L1": _l1_row}
    return [[name, "not measured", "", "", "no", figures[name]["error"]] if "error" in figures[name]
            else row(figures[name]) for name, row in rows.items() if name in figures]
