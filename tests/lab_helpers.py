"""Helpers test modules import by name (fixtures stay in conftest.py, which is not importable by name:
each test folder may have its own conftest, and Python keeps only one module called `conftest`)."""
from __future__ import annotations

import os

TEST_IMAGE_SIZE = 64  # small images keep the suite fast; the article's 224 is exercised in shape tests

JOB_WAIT_SECONDS = 300  # bound on a tiny background run on a busy 2-core machine; waits end as soon as it is done


def followed_job(at):
    """The board's view of the job an Experiments page session follows (its latest)."""
    from core.training.board import Board

    following = at.session_state["exp_following"]
    assert following, "the session follows no training"
    return Board(os.environ["LAB_RUNS_DIR"]).view(following[-1])


def wait_for_job(at, seconds: float = JOB_WAIT_SECONDS, rerun_while_waiting: bool = False):
    """Wait for the job an Experiments page session follows, then rerun the page once; its final snapshot.

    The job trains in a worker process; rerun_while_waiting also reruns the page on every poll, as a
    browser's live panel would.
    """
    import time

    deadline = time.monotonic() + seconds
    while not (view := followed_job(at)).finished:
        assert time.monotonic() < deadline, f"the job did not finish: {view.snapshot}"
        time.sleep(0.3)
        if rerun_while_waiting:
            at.run()
    at.run()
    return followed_job(at).snapshot


TIMING_CAPTION = "Timing a few batches on this server"


def wait_for_estimates(at, seconds: float = JOB_WAIT_SECONDS):
    """Rerun an Experiments page until no estimate is still being timed (in a browser, the page's own
    fragment does this); the AppTest."""
    import time

    deadline = time.monotonic() + seconds
    while any(TIMING_CAPTION in c.value for c in at.caption):
        assert time.monotonic() < deadline, "the estimates were never timed"
        time.sleep(0.5)
        at.run()
    return at


def wait_for_epoch(at, epochs: int = 1, seconds: float = JOB_WAIT_SECONDS):
    """Wait until the followed job has finished this many epochs of its current experiment."""
    import time

    deadline = time.monotonic() + seconds
    while (view := followed_job(at)).snapshot.epoch < epochs:
        assert time.monotonic() < deadline and not view.finished, view.snapshot
        time.sleep(0.2)
    return view


def make_zip(entries: dict[str, bytes]) -> bytes:
    """A deflated zip holding name -> bytes, for the zip-handling tests."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def saved_functions(folder) -> int:
    """How many concrete functions a SavedModel holds."""
    from pathlib import Path

    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(folder) / "saved_model.pb").read_bytes())
    return len(saved.meta_graphs[0].object_graph_def.concrete_functions)


def run_picker(at):
    """The Experiments page's run picker (its widget key changes whenever the page sets the runs)."""
    try:
        generation = at.session_state["runs_picker_generation"]
    except KeyError:  # the page has not set its runs yet
        generation = 0
    return at.multiselect(key=f"runs_picker_{generation}")


def keras_probabilities(model, softmax_output: bool, images):
    """What the Keras model itself says, the reference every export is compared with."""
    import numpy as np
    import tensorflow as tf

    out = model(np.asarray(images, dtype=np.float32), training=False)
    return (out if softmax_output else tf.nn.softmax(out)).numpy()


def predict_with_export(path: str, fmt: str, images):
    """Probabilities from an export (a SavedModel folder or its zip, or a file) for preprocessed images:
    float32 (n, size, size, 3) in [0, 1]."""
    import tempfile
    import zipfile
    from pathlib import Path

    import numpy as np

    from core.runs.export import ExportFormat, _savedmodel_probabilities, _tflite_probabilities, parse_format
    from core.safety.model_files import load_model

    fmt = parse_format(fmt)
    path = Path(path)
    images = np.asarray(images, dtype=np.float32)
    if fmt is ExportFormat.H5:
        model, info = load_model(path)
        return keras_probabilities(model, info.softmax_output, images)
    if fmt is ExportFormat.SAVEDMODEL:
        if path.suffix == ".zip":
            with tempfile.TemporaryDirectory() as tmp:
                with zipfile.ZipFile(path) as zf:
                    zf.extractall(tmp)
                folder = next(p.parent for p in Path(tmp).rglob("saved_model.pb"))
                return predict_with_export(folder, fmt, images)
        return _savedmodel_probabilities(path, images)
    return _tflite_probabilities(path, images)[0]
