"""Runs the figures, prints a table and writes them to a JSON file."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Speed figures of the Lab on generated JPEGs and a random-weight MobileNetV2, offline.")
    parser.add_argument("--quick", action="store_true",
                        help="few images and repetitions: checks that everything runs (a few minutes), figures meaningless")
    parser.add_argument("--work-dir", type=Path, default=HERE / "work",
                        help="generated images, the SavedModel and caches (default %(default)s)")
    parser.add_argument("--output", type=Path, help="default benchmarks/results.json, or benchmarks/cold_start.json "
                        "with --cold-start")
    parser.add_argument("--cold-start", action="store_true",
                        help="only C1: from Load on an empty cache to a ready cats_vs_dogs, served on loopback, on the "
                        "cloud preset (slow: generates an ~800 MB stand-in archive once, then prepares it)")
    parser.add_argument("--cold-start-images", type=int, default=25_000, metavar="N",
                        help="files in the stand-in archive, 1,738 of them dropped as TFDS does (default %(default)s)")
    parser.add_argument("--live", action="store_true",
                        help="only the live-training figures W1-W3 and L1, measured with `streamlit run` and "
                             "headless Chromium (several minutes; written to benchmarks/live-results.json)")
    parser.add_argument("--figures", nargs="+", choices=FIGURES + LIVE_FIGURES, metavar="FIGURE",
                        help=f"measure only these ({', '.join(FIGURES)}; default: all, without D1 D2 in --quick; "
                             f"with --live: {', '.join(LIVE_FIGURES)})")
    parser.add_argument("--room", type=int, nargs="*", metavar="SESSIONS",
                        help="only the workshop-room figures: Chromium sessions on one cloud-preset server "
                             "(default rooms of 12 and 30; written to benchmarks/room-results.json)")
    parser.add_argument("--own-room", type=int, nargs="?", const=30, metavar="SESSIONS",
                        help="only T1 and L2: participants teaching their own classes on one cloud-preset server "
                             "(a room of 30 by default; written to benchmarks/own-room-results.json)")
    parser.add_argument("--demo-only", action="store_true",
                        help="only D1 and D2, the offline demo's lesson and pretraining time (a few minutes)")
    return parser


FIGURES = ("P0", "P1", "P2", "R1", "R2", "R3", "R4", "R5", "D1", "D2")
LIVE_FIGURES = ("W1", "W2", "W3", "L1")
DEMO_FIGURES = ("D1", "D2")  # minutes of training on the offline demo; --quick leaves them out


def cold_start_rows(c1: dict) -> list[list[str]]:
    return [
        _row("C1", "Load on an empty cache to a ready dataset", f"{c1['seconds_to_ready']:.0f} s", "", None,
             f"{c1['files']:,} files, {c1['archive_bytes'] / 1e6:,.0f} MB on loopback: worker start "
             f"{c1['worker_start_s']:.0f} s, download {c1['download_s']:.0f} s, prepare {c1['prepare_s']:.0f} s, "
             f"open {c1['open_s']:.0f} s"),
        _row("C1", "  peak memory, server + download worker", f"{c1['peak_sum_gb']:.2f} GB", "< 2.7 GB", c1["met"],
             f"server {c1['peak_server_gb']:.2f} GB, worker {c1['peak_worker_gb']:.2f} GB (peaks, each its own)"),
    ]


# Full mode: 1,500 images (1,200 training, 300 validation) keep a whole run to a few minutes on 2 cores.
# Quick mode only checks that everything runs, so its memory run may overlap the timed figures.
FULL = {"per_class": 750, "pipeline_repeats": 3, "predict_calls": 100, "feature_images": 23_262, "renders": 3,
        "overlap_memory_runs": False, "whole_run_repeats": 2, "extraction_repeats": 3, "extraction_images": 640,
        "baseline_repeats": 2, "baseline_images": 256, "baseline_epochs": 2}
QUICK = {"per_class": 40, "pipeline_repeats": 1, "predict_calls": 10, "feature_images": 2_000, "renders": 1,
         "overlap_memory_runs": True, "whole_run_repeats": 1, "extraction_repeats": 1, "extraction_images": 48,
         "baseline_repeats": 1, "baseline_images": 32, "baseline_epochs": 1}


def _row(figure: str, what: str, value: str, goal: str, met: bool | None, detail: str) -> list[str]:
    return [figure, what, value, goal, {True: "yes", False: "no", None: ""}[met], detail]


def _phase_text(phases: dict) -> str:
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items())


def _p0_rows(p0: dict) -> list[list[str]]:
    return [
        _row("P0", f"whole run, {p0['epochs']} epochs: notebook / Lab", f"{p0['ratio']:.2f}x", ">= 2.5x", p0["met"],
             f"{p0['notebook_s']:.1f} s / {p0['lab_s']:.1f} s, {p0['images']} images, whole processes"),
        _row("P0", "  notebook phases (s)", "", "", None, _phase_text(p0["notebook_phases_s"])),
        _row("P0", "  Lab phases (s)", "", "", None, _phase_text(p0["lab_phases_s"])),
    ]


def _p1_rows(p1: dict) -> list[list[str]]:
    return [_row("P1", "feature extraction / bare backbone", f"{p1['ratio']:.2f}", ">= 0.90", p1["met"],
                 f"{p1['extraction_images_per_s']:.0f} / {p1['backbone_images_per_s']:.0f} images/s, "
                 f"batch {p1['batch_size']}, {p1['images']} images; decoding alone "
                 f"{p1['decode_images_per_s']:.0f} images/s, so at most {p1['bound_ratio']:.2f} without overlap")]


def _p2_rows(p2: dict) -> list[list[str]]:
    return [_row("P2", "baseline fit: JPEG pipeline / tensors", f"{p2['ratio']:.2f}", ">= 0.95", p2["met"],
                 f"{p2['jpeg_images_per_s']:.1f} / {p2['tensors_images_per_s']:.1f} images/s; decoding every "
                 f"epoch {p2['jpeg_every_epoch_images_per_s']:.1f} ({p2['ratio_every_epoch']:.2f})")]


def _r1_rows(r1: dict) -> list[list[str]]:
    return [
        _row("R1", "frozen fit, 3 epochs: uncached / cached", f"{r1['ratio_3_epochs']:.1f}x", ">= 2.5x",
             r1["ratio_3_epochs"] >= r1["goal_3_epochs"],
             f"{r1['uncached_3_epochs_s']:.1f} s / {r1['cached_3_epochs_s']:.1f} s, {r1['images']} images"),
        _row("R1", "frozen fit, 15 epochs: uncached / cached", f"{r1['ratio_15_epochs']:.1f}x", ">= 8x",
             r1["ratio_15_epochs"] >= r1["goal_15_epochs"],
             f"{r1['uncached_15_epochs_s_extrapolated']:.0f} s (extrapolated) / {r1['cached_15_epochs_s']:.1f} s"),
        _row("R1", "  the same at 23,262 images (extrapolated)",
             f"{r1['full_dataset_ratio_3_epochs']:.1f}x / {r1['full_dataset_ratio_15_epochs']:.1f}x", "", None,
             "3 / 15 epochs: {:.0f} / {:.0f} min uncached, {:.1f} / {:.1f} min cached".format(
                 r1["full_dataset_3_epochs_s"][0] / 60, r1["full_dataset_15_epochs_s"][0] / 60,
                 r1["full_dataset_3_epochs_s"][1] / 60, r1["full_dataset_15_epochs_s"][1] / 60)),
    ]


def _r2_rows(r2: dict) -> list[list[str]]:
    return [_row("R2", "input pipeline / backbone images/s", f"{r2['ratio']:.1f}x", ">= 2x", r2["met"],
                 f"{r2['pipeline_images_per_s']:.0f} / {r2['backbone_images_per_s']:.0f} images/s; "
                 f"fed by the pipeline {r2['extraction_images_per_s']:.0f}")]


def _r3_rows(r3: dict) -> list[list[str]]:
    return [_row("R3", "predict one JPEG / bare model call (p50)", f"{r3['ratio']:.2f}", "<= 1.2", r3["met"],
                 f"{r3['predict_bytes_p50_ms']:.1f} ms / {r3['bare_call_p50_ms']:.1f} ms; "
                 f"model.predict {r3['model_predict_p50_ms']:.1f} ms")]


def _r4_rows(r4: dict) -> list[list[str]]:
    return [
        _row("R4", f"peak memory, cached run of {r4['peak_images']} images", f"{r4['peak_gb']:.2f} GB", "", None,
             f"every generated image; {r4['bytes_per_image'] / 1024:.1f} KB more per image"),
        _row("R4", f"  estimated for {r4['estimate_images']:,} images", f"{r4['estimate_gb']:.2f} GB", "<= 1.5 GB",
             r4["met"], f"run's peak + per-image memory measured at {r4['feature_phase']['images']:,} images"),
    ]


def _r5_rows(r5: dict) -> list[list[str]]:
    return [_row("R5", "home page first render", f"{r5['seconds']:.2f} s", "<= 1.5 s", r5["met"],
                 f"TensorFlow imported: {'yes' if r5['tensorflow_imported'] else 'no'}")]


def _d1_rows(d1: dict) -> list[list[str]]:
    seeds = ", ".join(f"{s['transfer']:.0%} vs {s['baseline']:.0%}" for s in d1["seeds"])
    return [_row("D1", "demo: transfer - baseline val accuracy (median)", f"{d1['median_gap_points']:+.1f} points",
                 ">= 10 points", d1["met"], f"{len(d1['seeds'])} seeds at {d1['image_size']} px: {seeds}")]


def _d2_rows(d2: dict) -> list[list[str]]:
    return [_row("D2", "demo backbone pretraining", f"{d2['pretrain_seconds']:.0f} s", "<= 120 s", d2["met"],
                 f"{d2['pretrain_cpu_seconds']:.0f} CPU s on {d2['cpus']} CPUs; {d2['source_images']:,} source "
                 f"images, source-task accuracy {d2['source_accuracy']:.0%}")]


ROWS = {"P0": _p0_rows, "P1": _p1_rows, "P2": _p2_rows, "R1": _r1_rows, "R2": _r2_rows, "R3": _r3_rows,
        "R4": _r4_rows, "R5": _r5_rows, "D1": _d1_rows, "D2": _d2_rows}


def table_rows(figures: dict) -> list[list[str]]:
    return [row for name in FIGURES if name in figures for row in ROWS[name](figures[name])]


def format_table(rows: list[list[str]]) -> str:
    headers = ["", "figure", "measured", "goal", "met", "detail"]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict:
    import importlib.metadata as md

    return {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        **{pkg: md.version(pkg) for pkg in ("tensorflow", "tf-keras", "tensorflow-hub", "streamlit", "pillow")},
    }


def measure(setup, settings: dict, say, wanted=FIGURES) -> dict:
    from benchmarks import figures

    model_path = setup.work / f"r1-cached-model-{os.getpid()}.h5"
    results: dict = {}
    memory_runs = []
    try:
        if "D1" in wanted or "D2" in wanted:
            say("D1, D2: pretraining the demo backbone, then both models on the demo, 3 seeds ...")
            results.update(figures.d_demo(setup))
            shutil.rmtree(figures.cache_root(setup), ignore_errors=True)
        if "P0" in wanted:
            say("P0: the article's notebook against `python -m core train`, whole processes, alternating ...")
            results["P0"] = figures.p0_whole_runs(setup, settings["whole_run_repeats"])
        if "P1" in wanted:
            say("P1: feature extraction against the bare backbone ...")
            results["P1"] = figures.p1_extraction(setup, settings["extraction_repeats"], settings["extraction_images"])
        if "P2" in wanted:
            say("P2: baseline fit on the JPEG pipeline against in-memory tensors ...")
            results["P2"] = figures.p2_baseline_pipeline(setup, settings["baseline_repeats"],
                                                         settings["baseline_images"], settings["baseline_epochs"])
        if "R5" in wanted:
            say("R5: home page render ...")
            results["R5"] = figures.r5_home_page(settings["renders"])
        if "R4" in wanted:
            say("R4: peak memory of cached runs (separate processes) ...")
            memory_runs = figures.start_memory_runs(setup, settings["feature_images"])
            if not settings["overlap_memory_runs"]:
                # Alone on the machine, so they cannot slow one side of a ratio measured below.
                results["R4"] = figures.r4_memory(memory_runs)
        if "R2" in wanted:
            say("R2: input pipeline against the backbone ...")
            results["R2"] = figures.r2_pipeline(setup, settings["pipeline_repeats"])
        if "R1" in wanted or "R3" in wanted:
            say("R1: uncached against cached training ...")
            r1 = figures.r1_training(setup, model_path)
            if "R1" in wanted:
                results["R1"] = r1
        if "R3" in wanted:
            say("R3: prediction latency (the R1 cached model, reloaded) ...")
            results["R3"] = figures.r3_prediction(setup, model_path, settings["predict_calls"])
        if "R4" in wanted and "R4" not in results:
            say("R4: waiting for the memory runs ...")
            results["R4"] = figures.r4_memory(memory_runs)
    finally:
        for proc in memory_runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(figures.cache_root(setup), ignore_errors=True)
        model_path.unlink(missing_ok=True)
    return {k: results[k] for k in FIGURES if k in results}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mixed = set(args.figures or ()) & set(LIVE_FIGURES if not args.live else FIGURES)
    if mixed:
        parser.error(f"{', '.join(sorted(mixed))}: " + ("only with --live" if not args.live else "not with --live"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = QUICK if args.quick else FULL
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    from benchmarks import figures
    from benchmarks.workload import make_backbone, make_photo_folder

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    if args.live:
        return live_main(args, work, say, start)
    if args.room is not None:
        from benchmarks import room

        results = room.run_rooms(work, args.room or [12, 30], say)
        return _write(args.output or HERE / "room-results.json", results, room.table_rows(results), "room", start)
    if args.own_room is not None:
        from benchmarks import own_room

        results = own_room.run(work, args.own_room, say)
        return _write(args.output or own_room.RESULTS, results, own_room.table_rows(results), "own-room", start)
    if args.cold_start:
        from benchmarks.cold_start import measure as measure_cold_start

        say("C1: cold start of cats_vs_dogs (stand-in archive generated once, then reused) ...")
        c1 = measure_cold_start(work, args.cold_start_images, say)
        return _write(args.output or HERE / "cold_start.json", {"C1": c1}, cold_start_rows(c1), "cold-start", start)

    wanted = list(DEMO_FIGURES) if args.demo_only else args.figures or [
        f for f in FIGURES if not (args.quick and f in DEMO_FIGURES)]
    if set(wanted) <= set(DEMO_FIGURES):  # the demo makes its own images and backbone
        setup = figures.Setup(photos=None, backbone=None, work=work)
    else:
        say("Preparing generated JPEGs and the MobileNetV2 SavedModel (reused when already there) ...")
        setup = figures.Setup(
            photos=make_photo_folder(work / f"photos-{settings['per_class']}", settings["per_class"]),
            backbone=make_backbone(work / "mobilenet_v2_random").resolve(),
            work=work,
        )
    results = measure(setup, settings, say, wanted)
    return _write(args.output or HERE / "results.json", results, table_rows(results),
                  "demo" if args.demo_only else "quick" if args.quick else "full", start)


def _write(output: Path, results: dict, rows: list[list[str]], mode: str, start: float) -> int:
    report = {
        "mode": mode,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(time.perf_counter() - start, 1),
        "machine": machine(),
        "figures": results,
        "table": rows,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, output)
    print()
    print(format_table(rows))
    print(f"\nWritten to {output} ({report['seconds']:.0f} s in all).")
    return 0


def live_main(args, work: Path, say, start: float) -> int:
    from benchmarks import live

    results = live.main(work, args.quick, say, only=set(args.figures or LIVE_FIGURES))
    mode = "live-quick" if args.quick else "live"
    finished = time.strftime("%Y-%m-%d %H:%M:%S")
    for figure in results.values():
        figure["measured_at"] = finished
    output = args.output or HERE / "live-results.json"
    if args.figures:  # the figures not measured now stay as they were last measured, each with its date
        try:
            earlier = json.loads(output.read_text())
        except (OSError, ValueError):
            earlier = {}
        if earlier.get("mode") == mode:
            results = {**earlier.get("figures", {}), **results}
    rows = live.table_rows(results)
    report = {"mode": mode, "finished_at": finished,
              "seconds": round(time.perf_counter() - start, 1), "machine": machine(), "figures": results,
              "table": rows}
    output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(format_table(rows))
    print(f"\nWritten to {output} ({report['seconds']:.0f} s in all).")
    return 0
