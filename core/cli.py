"""python -m core train | download | predict | compare | runs | evaluate | export | import-run | demo: what a workshop
host types."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.models.cluster import DEFAULT_PEER_TIMEOUT
from core.models.distribute import STRATEGY_NAMES
from core.settings.config import (
    ARTICLE_BATCH_SIZE,
    ARTICLE_IMAGE_SIZE,
    ARTICLE_LEARNING_RATE,
    CLASS_WEIGHT_CHOICES,
    DEFAULT_SOURCE,
    MOBILENET_V2_HANDLE,
    DataConfig,
    ModelKind,
    TrainConfig,
)
from core.settings.errors import LabError, StopRequested
from core.settings.source import Source


def _checked(convert, what: str, ok, bounds: str):
    """An argparse type: convert the text, then refuse a value that is not ok, saying the bounds."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {bounds} (got {value})")
        return value
    return parse


_positive_int = _checked(int, "a whole number", lambda v: v >= 1, "at least 1")
_learning_rate = _checked(float, "a number", lambda v: 0 < v < 1, "between 0 and 1")


def _version() -> str:
    import importlib.metadata as md

    from core import __version__

    def installed(package: str) -> str:
        try:
            return md.version(package)
        except md.PackageNotFoundError:
            return "not installed"

    return (f"Transfer Learning Lab {__version__} (tensorflow {installed('tensorflow')}, tf-keras "
            f"{installed('tf-keras')}, tensorflow-hub {installed('tensorflow-hub')}, Python {sys.version.split()[0]})")


def build_parser() -> argparse.ArgumentParser:
    from core.settings.paths import runs_dir

    parser = argparse.ArgumentParser(prog="python -m core", description="Transfer Learning Lab: train, "
                                     "predict and compare the article's baseline CNN and MobileNetV2 transfer model.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one model and write a run directory")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue a finished run from its model.h5 (weights and optimizer state) for --epochs "
                       "more epochs on its own dataset and settings; written as a new run naming its parent")
    train.add_argument("--model", choices=[k.value for k in ModelKind], default=ModelKind.TRANSFER.value)
    train.add_argument("--data", default=DEFAULT_SOURCE, help="tfds:NAME or folder:PATH (default %(default)s)")
    train.add_argument("--epochs", type=_positive_int, help="default: the article's (15 baseline, 3 transfer)")
    train.add_argument("--batch-size", type=_positive_int, default=ARTICLE_BATCH_SIZE)
    train.add_argument("--learning-rate", type=_learning_rate, default=ARTICLE_LEARNING_RATE)
    train.add_argument("--image-size", type=_positive_int, default=ARTICLE_IMAGE_SIZE)
    train.add_argument("--limit", type=_positive_int, help="training images to use (validation cut 80/20 to match)")
    train.add_argument("--handle", default=MOBILENET_V2_HANDLE, help="hub URL, Kaggle handle or SavedModel folder")
    train.add_argument("--no-feature-cache", action="store_true",
                       help="push every image through the frozen backbone in every epoch, as the article does")
    train.add_argument("--augment", action="store_true",
                       help="random flip/rotation/zoom of training images (turns the feature cache off)")
    train.add_argument("--fine-tune-epochs", type=int, default=0, metavar="N",
                       help="after the frozen epochs, N more with the hub backbone unfrozen (transfer model)")
    train.add_argument("--fine-tune-learning-rate", type=_learning_rate, default=1e-5, metavar="X")
    train.add_argument("--class-weight", choices=CLASS_WEIGHT_CHOICES, default=None,
                       help="balanced: weight each class's loss by total / (classes x its images), so a small "
                       "class counts as much as a large one (default: every image counts the same)")
    train.add_argument("--runs-dir", type=Path, default=runs_dir())
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--strategy", choices=STRATEGY_NAMES, default="auto",
                       help="tf.distribute strategy: auto (a TPU if one is named, all GPUs if more than one, else "
                       "one device), default, mirrored (all GPUs, or every CPU device), tpu, or multiworker (the "
                       "machines listed in TF_CONFIG; see docs/several-machines.md); --batch-size is per replica "
                       "(default %(default)s)")
    train.add_argument("--peer-timeout", type=float, default=DEFAULT_PEER_TIMEOUT, metavar="SECONDS",
                       help="multiworker: how long to wait for every worker to join, and for any training step "
                       "to complete on all of them, before giving up with a message (default %(default)s)")
    train.add_argument("--mixed-precision", action="store_true",
                       help="compute in float16 on GPUs (baseline CNN); recorded as unused elsewhere")

    download = sub.add_parser("download", help="download and prepare a TFDS dataset and fetch a hub module into the "
                              "cache folder, with progress (then training works offline)")
    download.add_argument("--data", help=f"tfds:NAME to download and prepare (default {DEFAULT_SOURCE} unless only "
                          "--handle is given)")
    download.add_argument("--handle", help=f"hub URL to fetch (default {MOBILENET_V2_HANDLE} unless only --data is given)")

    predict = sub.add_parser("predict", help="classify images with a saved run or .h5 model")
    predict.add_argument("--model", required=True, help="a run directory or an .h5 file")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--json", action="store_true", help="print one JSON list instead of lines")

    import_run = sub.add_parser("import-run", help="add a zipped run folder from another machine to the runs folder")
    import_run.add_argument("zip", type=Path, help="a zip of one run folder (config.json, history.json, "
                            "metrics.json, model.h5, ...)")
    import_run.add_argument("--runs-dir", type=Path, default=runs_dir())

    compare = sub.add_parser("compare", help="a table comparing run directories")
    compare.add_argument("runs", nargs="+", type=Path)
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")

    runs = sub.add_parser("runs", help="list the runs in a runs folder")
    runs.add_argument("--runs-dir", type=Path, default=runs_dir())
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")

    demo = sub.add_parser("demo", help="write the offline demo dataset and pretrain its backbone (once, cached)")
    demo.add_argument("folder", type=Path, help="where the dataset goes; the backbone stays in the cache folder")
    demo.add_argument("--per-class", type=_positive_int, default=100)

    efficiency = sub.add_parser("efficiency", help="validation accuracy of both models by training images per class")
    efficiency.add_argument("--data", default=DEFAULT_SOURCE, help="tfds:NAME or folder:PATH (default %(default)s)")
    efficiency.add_argument("--handle", default=MOBILENET_V2_HANDLE, help="the transfer model's hub handle")
    efficiency.add_argument("--image-size", type=_positive_int, default=ARTICLE_IMAGE_SIZE)
    efficiency.add_argument("--counts", type=_positive_int, nargs="+", default=[5, 10, 20, 40, 80],
                            help="training images per class to try (default %(default)s)")
    efficiency.add_argument("--baseline-epochs", type=_positive_int, default=15)
    efficiency.add_argument("--seed", type=int, default=42)

    evaluate = sub.add_parser("evaluate", help="confusion matrix and per-class metrics of a run's validation split")
    evaluate.add_argument("run", type=Path, help="a run directory")
    evaluate.add_argument("--wrong", type=int, default=12, metavar="N",
                          help="thumbnails of the N most confidently wrong images to keep (default %(default)s)")
    evaluate.add_argument("--json", action="store_true", help="print the evaluation as JSON instead of tables")

    export = sub.add_parser("export", help="export a run's model as .h5, SavedModel or TFLite")
    export.add_argument("run", type=Path, help="a run directory")
    export.add_argument("--format", required=True, choices=["h5", "savedmodel", "tflite", "tflite-fp16", "tflite-int8"],
                        help="tflite-fp16: float16 weights, about half the size of tflite, nearly full precision; "
                        "tflite-int8: about 4x smaller, refused where its rounding moves the probabilities too far")
    export.add_argument("--out", type=Path, help="file or folder to write (default: RUN/exports/; a SavedModel "
                        "is zipped when this ends in .zip)")
    return parser


class TerminalProgress:
    """tf_keras's Progbar within each epoch, as Keras's own fit draws it, only when stdout is a terminal:
    piped output stays one line per epoch for scripts."""

    def __init__(self, stream=None):
        # Looked up per call: a default of sys.stdout would keep whatever stream was current at import.
        self.active = (stream or sys.stdout).isatty()
        self.bar = None
        self.epoch = None
        self.open = False  # a bar has been drawn but not finished with its own newline

    def batch(self, report) -> None:
        if not self.active:
            return
        if self.bar is None or report.epoch != self.epoch:
            from tf_keras.utils import Progbar

            self.bar, self.epoch = Progbar(report.steps, unit_name="step"), report.epoch
        self.bar.update(report.step)
        self.open = report.step < report.steps  # Progbar ends its line itself on the last step

    def end_epoch(self) -> None:
        if self.open:
            print(flush=True)
        self.bar, self.open = None, False


def _print_json(value) -> None:
    import json

    from core.present.tables import json_safe

    print(json.dumps(json_safe(value), indent=2))


def cmd_train(args) -> int:
    from core.models.cluster import peer_failures, runs_folder, writes_runs
    from core.training.board import Board
    from core.training.experiment import Callbacks, resume_experiment, run_experiment
    from core.training.jobs import Experiment, Job

    bar = TerminalProgress()

    def on_epoch(r) -> None:
        bar.end_epoch()
        m = r.metrics
        print(f"Epoch {r.epoch}/{r.epochs}  loss {m['loss']:.4f}  accuracy {m['accuracy']:.4f}  "
              f"val_loss {m['val_loss']:.4f}  val_accuracy {m['val_accuracy']:.4f}  {r.seconds:.1f}s", flush=True)

    def on_status(msg: str) -> None:
        if not msg.startswith("Features for"):  # per-batch extraction notes: the bar's job on a terminal
            print(msg, file=sys.stderr, flush=True)

    callbacks = Callbacks(on_epoch=on_epoch, on_batch=bar.batch, on_status=on_status)
    # Under several workers only the chief writes (and evaluates) the run; the others use a scratch folder.
    chief = writes_runs()
    with runs_folder(args.runs_dir) as runs_dir:
        if args.resume:
            with peer_failures():
                run_dir = resume_experiment(args.resume, args.epochs, runs_dir, callbacks, evaluate=chief)
        else:
            data = DataConfig(source=args.data, image_size=args.image_size, batch_size=args.batch_size,
                              limit=args.limit, seed=args.seed, augment=args.augment)
            train = TrainConfig(model=ModelKind(args.model), epochs=args.epochs, learning_rate=args.learning_rate,
                                handle=args.handle, cache_features=not args.no_feature_cache,
                                fine_tune_epochs=args.fine_tune_epochs,
                                fine_tune_learning_rate=args.fine_tune_learning_rate, strategy=args.strategy,
                                mixed_precision=args.mixed_precision, class_weight=args.class_weight)

            def runner(data, train, runs_dir, board_callbacks):
                with peer_failures():  # a lost peer is a one-line error, not the job's traceback
                    return run_experiment(data, train, runs_dir, board_callbacks.joined(callbacks), evaluate=chief)

            # Listed on the job board while it trains, so the dashboard shows it (and can stop it) too.
            run_dir = Board(runs_dir).run_here(Job([Experiment(data, train)], runs_dir, runner)).run_dirs[-1]
    bar.end_epoch()
    if not chief:
        print("This worker's share of the training is done; the chief writes the run.", file=sys.stderr)
        return 0
    print(run_dir)
    return 0


class DownloadLines:
    """Download progress on stderr: one line rewritten in place on a terminal, else a line per phase or 10 s."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.active = self.stream.isatty()
        self.last: tuple[str, float] = ("", 0.0)

    def show(self, status) -> None:
        import time

        line = status.line()
        if self.active:
            self.stream.write("\r" + line[:110].ljust(110))
        elif status.phase != self.last[0] or time.monotonic() - self.last[1] >= 10:
            self.stream.write(line + "\n")
        else:
            return
        self.last = (status.phase, time.monotonic())
        self.stream.flush()

    def close(self) -> None:
        if self.active and self.last[0]:
            self.stream.write("\n")
            self.stream.flush()


def cmd_download(args) -> int:
    from core.data.downloads import cancel, preparation
    from core.models.hub import fetch
    from core.settings.paths import tfds_dir

    data, handle = args.data, args.handle
    if data is None and handle is None:
        data, handle = DEFAULT_SOURCE, MOBILENET_V2_HANDLE
    if data is not None:
        source = Source.parse(data)
        name = source.value.strip()
        if not source.is_tfds or not name:
            raise LabError(f"--data must be tfds:NAME (got '{data}'); folders need no download.")
        lines = DownloadLines()
        try:
            for status in preparation(name):
                lines.show(status)
        except KeyboardInterrupt:
            lines.close()
            cancel(name, tfds_dir())
            print("Cancelled; the partial download was removed.", file=sys.stderr)
            return 130
        lines.close()
        print(f"{data}: ready in {tfds_dir()}")
    if handle is not None:
        print(f"{fetch(handle)}: ready in the hub cache")
    return 0


def cmd_predict(args) -> int:
    from core.runs.predict import PredictionError, load_for_prediction, predict_bytes

    loaded = load_for_prediction(args.model)
    files, rows = [], []
    for path in args.images:
        try:
            files.append((str(path), path.read_bytes()))
        except OSError as exc:
            rows.append({"file": str(path), "error": f"cannot read the file ({exc.strerror})"})
    for result in predict_bytes(loaded, files) if files else []:
        if isinstance(result, PredictionError):
            rows.append({"file": result.name, "error": result.message.removeprefix(result.name + ": ")})
        else:
            rows.append({"file": result.name, "label": result.label, "confidence": result.confidence,
                         "probabilities": result.probabilities})
    if args.json:
        _print_json(rows)
    for row in [] if args.json else rows:
        if "error" in row:
            print(f"{row['file']}: error: {row['error']}")
        else:
            probs = "  ".join(f"{k} {v:.4f}" for k, v in row["probabilities"].items())
            print(f"{row['file']}: {row['label']}  ({probs})")
    return 1 if any("error" in row for row in rows) else 0


def cmd_compare(args) -> int:
    from core.present.tables import compare_rows, format_table, run_summary
    from core.runs.folders import open_run

    records = [open_run(p) for p in args.runs]
    if args.json:
        _print_json([run_summary(r) for r in records])
    else:
        print(format_table(*compare_rows(records)))
    return 0


def cmd_runs(args) -> int:
    from core.present.tables import compare_rows, format_table, run_summary
    from core.runs.folders import list_runs

    listing = list_runs(args.runs_dir)
    if args.json:
        _print_json({"runs": [run_summary(r) for r in listing.runs],
                     "incomplete": [str(p) for p in listing.incomplete]})
        return 0
    if not listing.runs:
        print(f"No finished runs in {args.runs_dir}.")
    else:
        print(format_table(*compare_rows(listing.runs)))
    for path in listing.incomplete:
        print(f"incomplete (not shown): {path}")
    return 0


def cmd_demo(args) -> int:
    from core.models.demo_backbone import prepare_demo

    def progress(_fraction: float, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    demo = prepare_demo(args.folder / "scenes", args.per_class, progress)
    if demo.pretrain:
        print(f"Pretrained the backbone on {demo.pretrain.source_images:,} images of {demo.pretrain.source_classes} "
              f"source shapes in {demo.pretrain.seconds:.0f} s.")
    print(f"Dataset: {demo.source}\nHub handle: {demo.backbone}")
    print(f"Try: python -m core train --data {demo.source} --handle {demo.backbone} --image-size 64")
    return 0


def cmd_efficiency(args) -> int:
    from core.present.tables import format_table
    from core.training.efficiency import data_efficiency

    data = DataConfig(source=args.data, image_size=args.image_size, seed=args.seed)
    result = data_efficiency(data, args.handle, args.counts, {ModelKind.BASELINE: args.baseline_epochs},
                             on_status=lambda msg: print(msg, file=sys.stderr, flush=True))
    counts = [n for n, _ in result.accuracies(ModelKind.BASELINE)]
    rows = [[result.labels[kind]] + [f"{acc:.1%}" for _, acc in result.accuracies(kind)] for kind in ModelKind]
    print(format_table(["images per class"] + [str(n) for n in counts], rows))
    print(f"Validation accuracy on {result.val_images} images.")
    return 0


def cmd_evaluate(args) -> int:
    from core.present.tables import describe_reload_check, format_report
    from core.runs.evaluate import evaluate_run
    from core.runs.folders import open_run
    from core.runs.reload_check import RELOAD_CHECK_KEY

    if args.wrong < 0:
        raise LabError(f"--wrong must be 0 or more (got {args.wrong}).")
    metrics = open_run(args.run).metrics
    evaluation = evaluate_run(args.run, max_wrong=args.wrong)
    if args.json:
        _print_json({**evaluation.to_dict(), "macro": evaluation.macro._asdict(),
                     RELOAD_CHECK_KEY: metrics.get(RELOAD_CHECK_KEY)})
        return 0
    print(format_report(evaluation))
    print(f"\nReload check (the article's last step): {describe_reload_check(metrics)}")
    print(f"Saved {args.run / 'evaluation.json'}")
    return 0


def cmd_export(args) -> int:
    from core.runs.export import FORMATS, export_estimate, export_run, parse_format
    from core.settings.text import megabytes

    estimate = export_estimate(args.run, args.format)
    if estimate is not None:
        print(f"Converting to {FORMATS[parse_format(args.format)].label}: {estimate.describe()} ...", flush=True)
    result = export_run(args.run, args.format, args.out)
    info = FORMATS[result.format]
    print(f"{info.label}, {megabytes(result.size_bytes)}, written in {result.seconds:.1f}s. Use: {info.use}.")
    if result.check:
        print(f"{result.check}.")
    print(result.path)
    return 0


def cmd_import_run(args) -> int:
    from core.runs.archives import import_run_file

    imported = import_run_file(args.zip, args.runs_dir)
    for warning in imported.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(imported.path)
    return 0


COMMANDS = {"train": cmd_train, "download": cmd_download, "predict": cmd_predict, "compare": cmd_compare,
            "runs": cmd_runs, "demo": cmd_demo, "efficiency": cmd_efficiency, "evaluate": cmd_evaluate,
            "export": cmd_export, "import-run": cmd_import_run}


def _start_tensorflow_quietly(peer_timeout: float | None = None) -> None:
    """Import TensorFlow with native stderr muted: its C++ start-up lines (CUDA probing, CPU features)
    would bury the CLI's own output. Python-level warnings and errors are untouched.

    With peer_timeout, this process joins the cluster of TF_CONFIG instead of starting its devices alone:
    TensorFlow accepts that only before it has run anything."""
    fd = sys.stderr.fileno()
    saved, devnull = os.dup(fd), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(devnull, fd)
    try:
        import tensorflow as tf

        if peer_timeout is None:
            tf.config.list_logical_devices()
        else:
            from core.models.cluster import join

            join(peer_timeout, stderr=saved)
    finally:
        os.dup2(saved, fd)
        os.close(devnull)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 the Lab refused or could not do it (a message says why),
    2 the command line itself was wrong (argparse's usage errors), 130 stopped or interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.resume and args.epochs is None:
        parser.error("--resume needs --epochs N: how many more epochs to train")
    multiworker = args.command == "train" and args.strategy == "multiworker"
    try:
        if multiworker:
            from core.models.cluster import join, read_tf_config

            read_tf_config()  # refused before TensorFlow starts
        if args.command not in ("compare", "runs") and not os.environ.get("LAB_VERBOSE"):
            try:
                _start_tensorflow_quietly(args.peer_timeout if multiworker else None)
            except (OSError, ValueError):  # no real stderr file descriptor (e.g. captured in tests)
                pass
        if multiworker:
            join(args.peer_timeout)  # already joined above unless TensorFlow started loudly
        return COMMANDS[args.command](args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StopRequested:
        print("Stopped before the first epoch finished; nothing was saved.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nInterrupted; no run directory was written for the unfinished run.", file=sys.stderr)
        return 130
