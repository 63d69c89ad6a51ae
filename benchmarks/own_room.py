"""A workshop room where every participant teaches the Lab their own classes, on the hosted preset.

Each participant opens Your classes in a browser of its own, names two classes, uploads 15 generated photos
to each (distinct per participant), presses Train, reads the validation accuracy, presses Try it and
classifies one new photo on Predict. The MobileNetV2 stand-in (the article's backbone with random weights,
saved as TF Hub publishes it) lies in the server's cache folder, as a hosted Lab's downloaded module would.

T1  one participant alone: from pressing Train to the validation accuracy on screen (median of three).
L2  a room of N participants pressing Train together: results seen, time until the last one, peak server
    plus workers memory, Predict's p95 from a photo handed over to its verdict on screen and the server's
    part of it (from its log: the Predict page's run until its verdicts are drawn), worst health check,
    errors seen.

`python -m benchmarks --own-room [N]` writes benchmarks/own-room-results.json.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.room import ERROR_TEXT, HEALTH_GOAL_S, HOST_MEMORY_GB, ROOM_BROWSER_NICENESS, Sampler, memory_cell

HERE = Path(__file__).resolve().parent
TIMEOUT_MS = 900_000
PER_CLASS = 15
T1_GOAL_S = 15.0
PREDICT_GOAL_S = 2.0
RESULTS = HERE / "own-room-results.json"  # written by `python -m benchmarks --own-room`


def photos(participant: int, label: int, count: int) -> list[dict]:
    """Distinct noisy JPEGs per participant and class: each class leans to its own colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1000 * participant + label)
    colour = (200, 60, 50) if label == 0 else (50, 70, 200)
    out = []
    for i in range(count):
        pixels = np.clip(rng.normal(colour, 45, (240, 320, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
        out.append({"name": f"p{participant}-c{label}-{i}.jpg", "mimeType": "image/jpeg", "buffer": buffer.getvalue()})
    return out


async def _settle(page) -> None:
    """Until Streamlit's script run ends (its status widget gone)."""
    await page.wait_for_timeout(300)
    await page.get_by_test_id("stStatusWidget").wait_for(state="hidden")


async def _add_class(page, name: str) -> None:
    await page.get_by_label("New class").fill(name)
    await page.get_by_role("button", name=re.compile("Add class")).click()
    await page.get_by_test_id("stButtonGroup").get_by_text(name, exact=True).wait_for()
    await _settle(page)


async def _fill(page, name: str, files: list[dict]) -> None:
    await page.get_by_test_id("stButtonGroup").get_by_text(name, exact=True).click()
    await page.get_by_text(f"Show {name} to the camera").wait_for()
    await _settle(page)
    await page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(files)
    await page.get_by_text(f"Added {len(files)} images to {name}").wait_for()
    await _settle(page)


async def participant(browser, url: str, token: str, index: int, record: dict, ready: asyncio.Event,
                      go: asyncio.Event) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = record.setdefault("errors", [])
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    try:
        await page.goto(f"{url}/your-classes?s={token}")
        await page.get_by_role("heading", name="Your classes").wait_for()
        await _settle(page)
        names = (f"red {index}", f"blue {index}")
        for name in names:
            await _add_class(page, name)
        for label, name in enumerate(names):
            await _fill(page, name, photos(index, label, PER_CLASS))
        ready.set()
        await go.wait()
        train = page.get_by_role("button", name=re.compile("^Train"))
        record["click"] = time.monotonic()
        await train.click()
        await page.get_by_text(re.compile("validation accuracy")).first.wait_for()
        record["result"] = time.monotonic()
        text = await page.inner_text("body")
        accuracy = re.search(r"validation accuracy\s+([\d.]+)%", text)
        record["accuracy"] = float(accuracy.group(1)) / 100 if accuracy else None
        await page.get_by_role("button", name=re.compile("Try it")).click()
        await page.get_by_role("heading", name="Predict").wait_for()
        await _settle(page)
        # The first photo loads the model (once per model and server); the second is what every later one costs.
        for shown, (key, name) in enumerate((("first_predict_s", "new-a.jpg"), ("predict_s", "new-b.jpg"))):
            new_photo = {**photos(index + 500 + len(key), 0, 1)[0], "name": f"p{index}-{name}"}
            began = time.monotonic()
            await page.get_by_test_id("stFileUploaderDropzoneInput").last.set_input_files([new_photo])
            # The verdict's card: the photo's caption, then its confidence under the class (the uploader's
            # own list shows the name as soon as the upload ends, before any verdict).
            await page.get_by_test_id("stImageCaption").get_by_text(new_photo["name"], exact=True).wait_for()
            await page.get_by_text(re.compile(r"% confident$")).nth(shown).wait_for()
            record[key] = time.monotonic() - began
            await _settle(page)
        body = await page.inner_text("body")
        errors.extend(m.group(0) for m in ERROR_TEXT.finditer(body))
    except Exception as exc:
        errors.append(f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(HERE.parent / "test-artifacts" / f"own-room-{index}.png"), full_page=True)
    finally:
        ready.set()  # a participant that failed holds nobody else
        await context.close()


async def _room(url: str, tokens: list[str], say, together: bool) -> list[dict]:
    from playwright.async_api import async_playwright

    from benchmarks.live import _niced_chromium
    from benchmarks.server import ARTIFACTS

    ARTIFACTS.mkdir(exist_ok=True)
    records = [{} for _ in tokens]
    async with async_playwright() as p:
        # As in benchmarks.room: the participants' browsers at the lowest priority.
        browser = await p.chromium.launch(executable_path=str(_niced_chromium(ARTIFACTS, ROOM_BROWSER_NICENESS)),
                                          args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        if together:
            ready = [asyncio.Event() for _ in tokens]
            go = asyncio.Event()
            tasks = [asyncio.create_task(participant(browser, url, t, i, records[i], ready[i], go))
                     for i, t in enumerate(tokens)]
            await asyncio.wait([asyncio.create_task(e.wait()) for e in ready], timeout=TIMEOUT_MS / 1000)
            say(f"own room: {len(tokens)} participants have their classes; everyone presses Train")
            go.set()
            await asyncio.gather(*tasks)
        else:
            for i, t in enumerate(tokens):
                go = asyncio.Event()
                go.set()
                await participant(browser, url, t, i, records[i], asyncio.Event(), go)
        await browser.close()
    return records


def _tokens(count: int, handle: str) -> list[str]:
    from core.settings.choices import new_token, save_choices

    tokens = []
    for _ in range(count):
        token = new_token()
        save_choices(token, {"lab_handle": handle})  # the backbone in the server's cache, as after a download
        tokens.append(token)
    return tokens


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


# Logged by the Predict page for each of its runs that classifies: the server's part of a Predict.
SERVER_PREDICT = re.compile(r"Predict: \d+ image\(s\) classified in ([\d.]+) s, the page drawn in ([\d.]+) s")


def server_predicts(log: Path) -> list[float]:
    """Seconds from the start of each classifying Predict run to its verdicts drawn, from the server's log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [float(m.group(2)) for m in SERVER_PREDICT.finditer(text)]


def summary(records: list[dict], sampler: Sampler, server_log: Path) -> dict:
    clicks = [r["click"] for r in records if "click" in r]
    results = [r for r in records if "result" in r]
    errors = [e for r in records for e in r.get("errors", [])]
    predicts = [r["predict_s"] for r in records if "predict_s" in r]
    firsts = [r["first_predict_s"] for r in records if "first_predict_s" in r]
    worst = max((took for _, took in sampler.health), default=None)
    return {
        "sessions": len(records),
        "results_seen": len(results),
        "train_to_accuracy_s": [round(r["result"] - r["click"], 1) for r in results],
        "last_result_s": round(max(r["result"] for r in results) - min(clicks), 1) if results else None,
        "accuracies": [r.get("accuracy") for r in results],
        "predict_p95_s": _p95(predicts),  # once the model is loaded
        "first_predict_p95_s": _p95(firsts),  # the model loaded for it (the first Predict also imports TensorFlow)
        # The same, as the server's log has it: its page runs alone, without the upload and the browser's drawing.
        "server_predict_p95_s": _p95(server_predicts(server_log)),
        "health_worst_s": worst,
        "health_over_1s": sum(1 for _, took in sampler.health if took > HEALTH_GOAL_S),
        "memory_peak_gb": round(sampler.memory_peak, 2),
        "memory_peak_pss_gb": round(sampler.shared_memory_peak, 2),
        "process_peaks_pss_gb": sampler.process_peaks,
        "errors": errors,
    }


def run(work: Path, sessions: int, say) -> dict:
    import os

    from benchmarks.live import _server_pid, browsers_kept_niced
    from benchmarks.server import ARTIFACTS, start_server
    from benchmarks.workload import make_backbone

    cache = work / "own-room-cache"
    os.environ["LAB_CACHE_DIR"] = str(cache)
    os.environ["TFHUB_CACHE_DIR"] = str(cache / "tfhub")
    say("own room: the MobileNetV2 stand-in in the server's cache folder (saved once) ...")
    handle = make_backbone(cache / "mobilenet-v2-standin")
    figures = {}
    for name, count, together in (("T1", 3, False), (f"L2-{sessions}", sessions, True)):
        runs = work / f"own-room-runs-{name}"
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(cache / "uploads" / "own", ignore_errors=True)
        with start_server(runs, {"LAB_PRESET": "cloud"}, f"benchmark-own-room-{name}") as url:
            say(f"own room: {name}, {count} participant(s) {'together' if together else 'one after another'} ...")
            with Sampler(url, _server_pid(url)) as sampler, browsers_kept_niced(ROOM_BROWSER_NICENESS):
                records = asyncio.run(_room(url, _tokens(count, str(handle)), say, together))
            result = summary(records, sampler, ARTIFACTS / f"benchmark-own-room-{name}.log")
        result["jobs"] = sum(1 for p in (runs / ".jobs").iterdir() if p.is_dir() and not p.name.startswith("."))
        result["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        if name == "T1":
            times = result["train_to_accuracy_s"]
            result["median_s"] = statistics.median(times) if times else None
            result["met"] = result["median_s"] is not None and result["median_s"] <= T1_GOAL_S and not result["errors"]
        else:
            result["met"] = (result["results_seen"] == sessions and not result["errors"]
                             and result["memory_peak_pss_gb"] < HOST_MEMORY_GB
                             # The server's part: here 30 browsers share its 2 cores at the lowest priority,
                             # so the browser-timed p95 says how starved they were (phones do their own drawing).
                             and (result["server_predict_p95_s"] or 1e9) <= PREDICT_GOAL_S)
        say(f"  {json.dumps({k: v for k, v in result.items() if k != 'errors'})}")
        figures[name] = result
    return figures


def table_rows(figures: dict) -> list[list[str]]:
    rows = [["figure", "results seen / sessions", "Train to accuracy (median)", "last result after the clicks",
             "Predict p95 (first, loading the model; the server's part)", "worst health check", "peak server + workers", "errors",
             "goal met"]]
    for name, r in figures.items():
        times = r["train_to_accuracy_s"]
        rows.append([name, f"{r['results_seen']} / {r['sessions']}",
                     f"{statistics.median(times):.1f} s" if times else "-",
                     "-" if r["last_result_s"] is None else f"{r['last_result_s']:.1f} s",
                     "-" if r["predict_p95_s"] is None else
                     f"{r['predict_p95_s']:.2f} s ({r['first_predict_p95_s']:.1f} s; "
                     + ("-" if r.get("server_predict_p95_s") is None else f"{r['server_predict_p95_s']:.2f} s") + ")",
                     "-" if r["health_worst_s"] is None else f"{r['health_worst_s']:.2f} s",
                     memory_cell(r), str(len(r["errors"])), "yes" if r["met"] else "no"])
    return rows
