"""Exports of a run's model for use outside the Lab: the .h5 itself, a SavedModel, and TFLite in float32,
float16 and int8 (dynamic range). The formats, their shared signature and how closely each agrees with the
Keras model: docs/runs.md#exports. Every TFLite file is run against its SavedModel when written; a file
refused that way is remembered in RUN_DIR/exports/NAME.refused.json while the converter stays the same.
"""
from __future__ import annotations

import contextlib
import enum
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.runs.folders import RunRecord, open_run
from core.safety.model_files import load_model
from core.settings.errors import LabError, error_line
from core.settings.files import read_json, replace_path, write_json
from core.settings.text import duration

logger = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
LABELS_FILE = "labels.txt"
SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


class ExportFormat(str, enum.Enum):
    H5 = "h5"
    SAVEDMODEL = "savedmodel"
    TFLITE = "tflite"
    TFLITE_FP16 = "tflite-fp16"
    TFLITE_INT8 = "tflite-int8"


TFLITE_FORMATS = (ExportFormat.TFLITE, ExportFormat.TFLITE_FP16, ExportFormat.TFLITE_INT8)


@dataclass(frozen=True)
class FormatInfo:
    label: str
    suffix: str  # added to the run id to name the export ("" for a folder)
    use: str  # where this format belongs
    tolerance: float  # largest probability difference from the Keras model the tests accept


FORMATS = {
    ExportFormat.H5: FormatInfo("Keras .h5", ".h5", "Keras / tf_keras in Python: the article's own file", 0.0),
    ExportFormat.SAVEDMODEL: FormatInfo("TF SavedModel", "_savedmodel", "TF Serving, TensorFlow in any language",
                                        1e-5),
    ExportFormat.TFLITE: FormatInfo("TFLite float32", ".tflite", "mobile and edge devices, full precision", 1e-4),
    ExportFormat.TFLITE_FP16: FormatInfo("TFLite float16", "_fp16.tflite",
                                         "mobile and edge GPUs: about half the size, nearly full precision", 0.01),
    ExportFormat.TFLITE_INT8: FormatInfo("TFLite int8 (dynamic range)", "_int8.tflite",
                                         "mobile where size matters: about 4x smaller, same top class", 0.05),
}


@dataclass(frozen=True)
class ExportResult:
    format: ExportFormat
    path: Path  # a file, or a folder for an unzipped SavedModel
    size_bytes: int
    seconds: float
    check: str | None = None  # how a TFLite file was checked against the SavedModel it was converted from


@dataclass(frozen=True)
class Download:
    """What a download button needs."""
    filename: str
    data: bytes
    mime: str


@dataclass(frozen=True)
class DownloadInfo:
    """A download's name and type, and whether its export is already on disk (then reading it is quick;
    otherwise export_download converts the model first, which takes seconds to minutes)."""
    filename: str
    mime: str
    ready: bool
    size_bytes: int | None  # of the very file the download hands over, once it is on disk
    refused: ExportRefused | None = None  # an earlier export of this format was refused and would be again


# Seconds of one core a conversion takes (it runs on about one thread): a fixed part plus a part per million
# parameters, far larger for a hub backbone's graph than for the baseline's one big dense layer. Every
# converting format costs about the same; a process without TensorFlow imported pays for that first.
EXPORT_SECONDS = {"hub": (2.0, 5.3), "keras": (2.0, 0.3)}
TENSORFLOW_IMPORT_SECONDS = 5.0
# Above this many runnable threads per core the estimate says the machine is busy and scales with the load.
BUSY_LOAD_PER_CORE = 1.2


@dataclass(frozen=True)
class ExportEstimate:
    """How long an export is expected to take: on an idle machine, and now, at the present load."""
    idle_seconds: float
    seconds: float
    load_per_core: float
    cores: int

    @property
    def busy(self) -> bool:
        return self.load_per_core > BUSY_LOAD_PER_CORE

    def describe(self) -> str:
        if not self.busy:
            return f"about {duration(self.seconds)}"
        return (f"about {duration(self.seconds)} now, about {duration(self.idle_seconds)} when this machine is idle "
                f"(it is busy: load {self.load_per_core * self.cores:.0f} on {self.cores} cores)")


def _load_per_core() -> tuple[float, int]:
    cores = os.cpu_count() or 1
    try:
        return os.getloadavg()[0] / cores, cores
    except (OSError, AttributeError):  # no load average on this platform: assume an idle machine
        return 0.0, cores


def export_estimate(run_dir: str | Path, fmt: str | ExportFormat) -> ExportEstimate | None:
    """How long export_run of this format will take here, from the model's parameter count (in the run's
    metrics) and the machine's present load; None for the .h5, which is copied, or a run that does not say."""
    run, fmt = _open(run_dir, fmt)
    params = run.metrics.get("total_params")
    if fmt is ExportFormat.H5 or not isinstance(params, int) or params <= 0:
        return None
    base, per_million = EXPORT_SECONDS["keras" if run.model_kind == "baseline" else "hub"]
    idle = base + per_million * params / 1e6 + (0.0 if "tensorflow" in sys.modules else TENSORFLOW_IMPORT_SECONDS)
    load, cores = _load_per_core()
    # A busy core shares its time among the runnable threads: one thread gets about cores / load of a core.
    return ExportEstimate(idle, idle * max(1.0, load), load, cores)


def parse_format(value: str | ExportFormat) -> ExportFormat:
    try:
        return ExportFormat(value)
    except ValueError:
        raise LabError(f"Unknown export format '{value}'; choose one of "
                       f"{', '.join(f.value for f in ExportFormat)}.") from None


def _open(run_dir: str | Path, fmt: str | ExportFormat) -> tuple[RunRecord, ExportFormat]:
    fmt = parse_format(fmt)
    return open_run(run_dir), fmt


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _serving_module(model, image_size: int, softmax_output: bool, labels_file: Path):
    """The signature and the model's variables, nothing else. The Keras model is reached through a closure,
    not held as an attribute: held, every layer's call function would be traced and saved too, which
    roughly doubles the time to save, load and convert a MobileNetV2 and adds nothing the signature uses."""
    import tensorflow as tf

    def forward(images):
        return model(images, training=False)

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.model_variables = list(model.variables)
            self.labels = tf.saved_model.Asset(str(labels_file))

        # No autograph: it cannot convert a class defined in a function, and there is no control flow to convert.
        @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32,
                                                    name=INPUT_NAME)], autograph=False)
        def serve(self, images):
            out = forward(images)
            return {OUTPUT_NAME: out if softmax_output else tf.nn.softmax(out)}

    return Serving()


def write_savedmodel(run_dir: Path, folder: Path) -> None:
    """Save the run's model as a SavedModel with a probabilities signature into `folder` (new)."""
    import tensorflow as tf

    run = open_run(run_dir)
    model, info = load_model(run.model_path)
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / LABELS_FILE
        labels.write_text("\n".join(info.class_names) + "\n")
        module = _serving_module(model, int(model.input_shape[1]), info.softmax_output, labels)
        tf.saved_model.save(module, str(folder), signatures={SIGNATURE: module.serve})


def _tflite_bytes(savedmodel: Path, fmt: ExportFormat) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=[SIGNATURE])
    if fmt is not ExportFormat.TFLITE:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt is ExportFormat.TFLITE_FP16:
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises its own and MLIR error types for unsupported graphs
        raise LabError(f"TFLite could not convert this model ({error_line(exc)}).") from None


def labels_path(tflite: Path) -> Path:
    """Where a .tflite export's class names go: beside it, one per line in output order."""
    return tflite.with_suffix(".labels.txt")


def _default_out(run_dir: Path, fmt: ExportFormat) -> Path:
    return run_dir / EXPORTS_DIR / f"{run_dir.name}{FORMATS[fmt].suffix}"


def export_run(run_dir: str | Path, fmt: str | ExportFormat, out: str | Path | None = None) -> ExportResult:
    """Write one export of a run and return where it went.

    Without `out` it goes to RUN_DIR/exports/, replacing an earlier export of the same format. A SavedModel
    becomes a folder, or a zip when `out` ends in .zip. Everything is written under a temporary name and
    renamed, so a killed export leaves no half file. An existing file at `out` is replaced; an existing
    folder is refused rather than mixed with, or swapped for, a folder the Lab did not write.
    """
    start = time.perf_counter()
    run, fmt = _open(run_dir, fmt)
    run_dir = run.path
    default = _default_out(run_dir, fmt)
    out = Path(out).expanduser() if out is not None else default
    if out.is_dir() and out != default:
        raise LabError(f"'{out}' is an existing folder; remove it or choose another output path.")
    if fmt is ExportFormat.SAVEDMODEL and out.suffix != ".zip" and out.exists() and not out.is_dir():
        raise LabError(f"'{out}' is an existing file and a SavedModel is a folder; choose a new path, "
                       "or one ending in .zip for a zipped SavedModel.")
    out.parent.mkdir(parents=True, exist_ok=True)
    check = None
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        tmp = Path(tmp)
        staged = tmp / out.name
        if fmt is ExportFormat.H5:
            shutil.copyfile(run.model_path, staged)
        else:
            savedmodel = tmp / "savedmodel"
            write_savedmodel(run_dir, savedmodel)
            if fmt is ExportFormat.SAVEDMODEL:
                if out.suffix == ".zip":
                    _zip(staged, [(p, Path(savedmodel.name) / p.relative_to(savedmodel))
                                  for p in sorted(savedmodel.rglob("*")) if p.is_file()])
                else:
                    savedmodel.rename(staged)
            else:
                staged.write_bytes(_tflite_bytes(savedmodel, fmt))
                try:
                    check = _check_tflite(staged, fmt, savedmodel, run.image_size)
                except ExportRefused as refused:
                    _remember_refusal(run_dir, refused)
                    raise
                with contextlib.suppress(OSError):  # a refusal left by an older converter no longer holds
                    _refusal_path(run_dir, fmt).unlink(missing_ok=True)
                shutil.copyfile(savedmodel / "assets" / LABELS_FILE, tmp / LABELS_FILE)
                os.replace(tmp / LABELS_FILE, labels_path(out))
        replace_path(staged, out)
    logger.info("Exported %s as %s to %s", run_dir.name, fmt.value, out)
    return ExportResult(fmt, out, _size(out), round(time.perf_counter() - start, 3), check)


def _download_file(run, fmt: ExportFormat) -> tuple[str, Path, str]:
    """(download name, the file on disk the download hands over, mime type) of one format.

    A TFLite download is a zip of the .tflite file and its labels.txt, kept beside them, so the size a
    button shows is the size of what it downloads.
    """
    if fmt is ExportFormat.H5:
        return f"{run.run_id}.h5", run.model_path, "application/x-hdf5"
    if fmt is ExportFormat.SAVEDMODEL:
        path = run.path / EXPORTS_DIR / f"{run.run_id}_savedmodel.zip"
        return path.name, path, "application/zip"
    path = _default_out(run.path, fmt)
    return f"{path.name}.zip", path.with_name(f"{path.name}.zip"), "application/zip"


def _zip(target: Path, files: list[tuple[Path, Path | str]]) -> None:
    """(file, name in the zip) pairs, written under a temporary name and renamed: never half a zip."""
    staged = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
    try:
        with zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, name in files:
                zf.write(path, name)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)


def download_info(run_dir: str | Path, fmt: str | ExportFormat) -> DownloadInfo:
    """What export_download would return, without converting anything."""
    run, fmt = _open(run_dir, fmt)
    name, path, mime = _download_file(run, fmt)
    ready = path.is_file()
    refused = None if ready or fmt not in TFLITE_FORMATS else stored_refusal(run.path, fmt)
    return DownloadInfo(name, mime, ready, path.stat().st_size if ready else None, refused)


def prepare_download(run_dir: str | Path, fmt: str | ExportFormat) -> DownloadInfo:
    """Write the export a download is made from into RUN_DIR/exports/ unless it is there already."""
    run, fmt = _open(run_dir, fmt)
    _, path, _ = _download_file(run, fmt)
    if path.is_file():
        return download_info(run.path, fmt)
    if fmt in TFLITE_FORMATS:
        tflite = _default_out(run.path, fmt)
        if not (tflite.is_file() and labels_path(tflite).is_file()):
            refused = stored_refusal(run.path, fmt)
            if refused is not None:  # converting the same model with the same converter refuses it again
                raise refused
            export_run(run.path, fmt, tflite)
        _zip(path, [(tflite, tflite.name), (labels_path(tflite), LABELS_FILE)])
    else:
        export_run(run.path, fmt, path)
    return download_info(run.path, fmt)


def export_download(run_dir: str | Path, fmt: str | ExportFormat) -> Download:
    """An export as bytes for a download button: the .h5 itself, the SavedModel as a zip, or a zip of the
    .tflite file with its labels.txt. Exports are kept in RUN_DIR/exports/ and reused on later calls."""
    info = prepare_download(run_dir, fmt)
    _, path, _ = _download_file(*_open(run_dir, fmt))
    return Download(info.filename, path.read_bytes(), info.mime)


def _savedmodel_probabilities(folder: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    serve = tf.saved_model.load(str(folder)).signatures[SIGNATURE]
    return serve(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()


LITERT = "ai-edge-litert"
TF_LITE = "tf.lite"


def _tflite_probabilities(path: Path, images: np.ndarray) -> tuple[np.ndarray, str]:
    """(probabilities, runtime): LiteRT (ai-edge-litert, the maintained runtime phones and edge devices use)
    where it is installed, else TensorFlow's deprecated tf.lite.Interpreter."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            # Its deprecation notice points to ai-edge-litert, which is what is missing here.
            warnings.simplefilter("ignore", UserWarning)
            interpreter, runtime = tf.lite.Interpreter(model_path=str(path)), TF_LITE
    else:
        interpreter, runtime = Interpreter(model_path=str(path)), LITERT
    # The signature runner resizes the input, allocated for a batch of 1, to the batch given.
    return interpreter.get_signature_runner(SIGNATURE)(**{INPUT_NAME: images})[OUTPUT_NAME], runtime


CHECK_IMAGES = 4
# What to export instead when a TFLite file is refused (the next format up in precision), and why it fits.
ALTERNATIVE = {ExportFormat.TFLITE_INT8: ExportFormat.TFLITE_FP16, ExportFormat.TFLITE_FP16: ExportFormat.TFLITE}
INSTEAD = {ExportFormat.TFLITE_FP16: "keeps every activation unrounded, at about half the size of float32",
           ExportFormat.TFLITE: "keeps full precision"}
# What a format rounds, in words, for a refusal message.
ROUNDING = {
    ExportFormat.TFLITE_INT8: "int8 rounds every weight, and every layer's input as it runs, to one of 256 levels",
    ExportFormat.TFLITE_FP16: "float16 rounds every weight to about 3 significant digits",
}


class ExportRefused(LabError):
    """A converted TFLite file disagreed with the SavedModel it came from by more than its format allows."""

    def __init__(self, fmt: ExportFormat, diff: float, tolerance: float, runtime: str):
        self.fmt, self.diff, self.tolerance, self.runtime = fmt, diff, tolerance, runtime
        self.alternative = ALTERNATIVE.get(fmt)
        text = (f"The {FORMATS[fmt].label} file disagrees with the model by up to {diff:.3g} when run with "
                f"{runtime}, more than the {tolerance:g} allowed, so it was not written")
        if fmt in ROUNDING:
            text += f": {ROUNDING[fmt]}, which moves this model's probabilities too far"
        if self.alternative is not None:
            text += (f". {FORMATS[self.alternative].label} ({self.alternative.value}) {INSTEAD[self.alternative]}: "
                     "export that instead")
        super().__init__(text + ".")


def _check_tflite(tflite: Path, fmt: ExportFormat, savedmodel: Path, image_size: int) -> str:
    """Run the new .tflite file and the SavedModel it came from on the same seeded images; refuse a file
    that disagrees by more than the format's tolerance. Returns what was checked, in words."""
    images = np.random.default_rng(0).random((CHECK_IMAGES, image_size, image_size, 3), dtype=np.float32)
    probs, runtime = _tflite_probabilities(tflite, images)
    diff = float(np.abs(probs - _savedmodel_probabilities(savedmodel, images)).max())
    tolerance = FORMATS[fmt].tolerance
    if not diff <= tolerance:
        raise ExportRefused(fmt, diff, tolerance, runtime)
    return (f"checked with {runtime}: on {CHECK_IMAGES} test images its probabilities are within {diff:.1e} of "
            "the SavedModel's")


def _refusal_path(run_dir: Path, fmt: ExportFormat) -> Path:
    out = _default_out(run_dir, fmt)
    return out.with_name(f"{out.name}.refused.json")


def _converter_versions() -> str:
    """The converter's and the checking runtime's versions: a refusal holds only while both are the same."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("tensorflow", "tensorflow-cpu", "ai-edge-litert"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def _remember_refusal(run_dir: Path, refused: ExportRefused) -> None:
    """Keep a refusal beside the run's exports: converting the same model again gives the same file."""
    path = _refusal_path(run_dir, refused.fmt)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {
            "format": refused.fmt.value, "max_abs_diff": refused.diff, "tolerance": refused.tolerance,
            "runtime": refused.runtime, "versions": _converter_versions()})
    except OSError as exc:  # a read-only run folder: the refusal is still reported, just not remembered
        logger.warning("Could not remember the refused %s export of %s: %s", refused.fmt.value, run_dir, exc)


def stored_refusal(run_dir: str | Path, fmt: str | ExportFormat) -> ExportRefused | None:
    """The refusal an earlier export of this format left for this run, if the same tolerance, converter and
    runtime would refuse it again; None otherwise."""
    fmt = parse_format(fmt)
    stored = read_json(_refusal_path(Path(run_dir), fmt))
    if stored is None:  # none left, or damaged or far too large
        return None
    try:
        if stored["tolerance"] != FORMATS[fmt].tolerance or stored["versions"] != _converter_versions():
            return None
        return ExportRefused(fmt, float(stored["max_abs_diff"]), float(stored["tolerance"]), str(stored["runtime"]))
    except (ValueError, KeyError, TypeError):
        return None
