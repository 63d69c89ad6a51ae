"""Time models in a process of their own: `python -m core.training.timing` reads a request on stdin and
writes the measurement as JSON on stdout.

Building a model and timing a few batches holds the interpreter lock for seconds (graph tracing is Python).
Done inside a dashboard server, it froze every visitor's page while it ran; in a child process the
server's thread only waits on a pipe, which holds nothing. One measurement runs at a time per lock file,
at the training workers' niceness, so a room of visitors asking at once adds one process, not many.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

from core.settings import errors
from core.settings.config import DataConfig, ModelKind
from core.settings.errors import LabError
from core.settings.processes import yield_cpu

TIMEOUT_SECONDS = 600  # a timing that takes longer than this is stuck, not slow
MAX_REPLY_BYTES = 64_000


def _measure(what: str, args: dict):
    """Runs in the child: the measurement itself, as plain JSON values."""
    from core.training import estimate

    if what != "setting":
        raise ValueError(f"unknown measurement {what!r}")
    speed = estimate.measure_speed(ModelKind(args["kind"]), args["image_size"], args["batch_size"], args["handle"],
                                   args["num_classes"])
    values = dataclasses.asdict(speed)
    if args.get("source"):
        from core.data.sources import open_source

        source = open_source(DataConfig(source=args["source"]))
        values["decode"] = estimate.measure_decode(source, args["image_size"], args["batch_size"])
    if args.get("fine_tune"):
        values["fine_tune"], values["fine_tune_setup"] = estimate.measure_fine_tune(
            args["image_size"], args["batch_size"], args["handle"], args["num_classes"])
    return values


def _lock(folder: Path | None):
    if folder is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def held():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "timing.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released with the file, also if this thread dies
            yield

    return held()


def measure_apart(what: str, lock_folder: str | Path | None = None, **args):
    """The measurement `what` made in a child process.

    Errors the user can act on come back as the Lab's own error types with their message; anything else
    becomes one LabError line (the child's traceback goes to the server's log through stderr).
    """
    request = json.dumps({"what": what, "args": args})
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    with _lock(Path(lock_folder) if lock_folder else None):
        try:
            done = subprocess.run([sys.executable, "-m", "core.training.timing"], input=request, text=True, check=False,
                                  capture_output=True, timeout=TIMEOUT_SECONDS, env=env, cwd=root)
        except subprocess.TimeoutExpired:
            raise LabError(f"Timing the model took over {TIMEOUT_SECONDS // 60} minutes and was stopped.") from None
        except OSError as exc:
            raise LabError(f"The timing process could not start ({exc.strerror or exc}).") from None
    if done.stderr:
        sys.stderr.write(done.stderr[-4000:])
    lines = done.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1][:MAX_REPLY_BYTES]) if lines else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise LabError(f"The timing process ended without a result (exit code {done.returncode}).")
    if "error" in reply:
        kind = getattr(errors, str(reply.get("type")), LabError)
        raise (kind if isinstance(kind, type) and issubclass(kind, LabError) else LabError)(str(reply["error"]))
    return reply["result"]


def measure_setting(kind: ModelKind, image_size: int, batch_size: int, handle: str, num_classes: int,
                    source: str | None = None, fine_tune: bool = False, lock_folder: str | Path | None = None):
    """A Speed for one setting, all of it from one child process (TensorFlow's import is paid once):
    the model's own steps, decoding the source's images when named, the unfrozen backbone when asked."""
    from core.models.hub import check_available
    from core.settings.specs import spec
    from core.training.estimate import Speed

    if spec(kind).has_backbone:
        # A module that is neither cached nor reachable is known here in a moment, without starting a
        # TensorFlow process that would only find the same.
        check_available(handle)
    values = measure_apart("setting", lock_folder, kind=kind.value, image_size=image_size, batch_size=batch_size,
                           handle=handle, num_classes=num_classes, source=source, fine_tune=fine_tune)
    return Speed(**{f.name: float(values[f.name]) for f in dataclasses.fields(Speed) if f.name in values})


def main() -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    yield_cpu()
    try:
        request = json.loads(sys.stdin.read(MAX_REPLY_BYTES))
        reply = {"result": _measure(request["what"], request["args"])}
    except LabError as exc:
        reply = {"error": str(exc), "type": type(exc).__name__}
    except Exception as exc:  # the page shows one line; the details go to the server's log
        logging.getLogger(__name__).exception("timing failed")
        reply = {"error": f"Timing failed ({exc.__class__.__name__}); the server log has the details."}
    sys.stdout.write("\n" + json.dumps(reply) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
