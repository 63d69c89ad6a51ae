"""Worker processes: a module of the Lab started as `python -m MODULE ARGS`, and whether a pid still lives.

Trainings (core.training.worker) and TFDS downloads (core.data.downloads) run in processes of their own,
never in the server that shows them: a crash or an out-of-memory kill then ends that work only.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LAB_PACKAGES = ("core", "app_pages")


def show_lab_messages(level: int = logging.INFO) -> None:
    """Write the Lab's own log messages from `level` up to this process's standard error (the server's log).

    Without it they reach only Python's last-resort handler, which drops everything below WARNING, so what the
    server did (a run folder tidied, a model exported) never showed. Other libraries' loggers keep the root's
    level (WARNING). Calling it again (every script run does) changes nothing.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(format=LOG_FORMAT)
    for name in LAB_PACKAGES:
        logging.getLogger(name).setLevel(level)


def launch_module(module: str, args: Iterable[str | os.PathLike], log_path: str | Path, *, append_log: bool = True,
                  env_defaults: Mapping[str, str] | None = None, stdin_pipe: bool = False) -> subprocess.Popen:
    """Start `python -m module args` with this interpreter, from the repository's root, its output in log_path.

    The repository is put first on PYTHONPATH, so the worker imports this checkout whatever the server's
    working folder. env_defaults are set only where the environment has no value of its own. The worker
    gets a session of its own: a page's rerun, a closed tab or Ctrl-C in the server's terminal leaves it
    alone; whoever started it stops it on purpose. With stdin_pipe the caller may write to its standard
    input (a warm worker waits there for its job); otherwise it reads nothing.
    """
    env = {**(env_defaults or {}), **os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    with open(log_path, "ab" if append_log else "wb") as log:
        return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO_ROOT, env=env,
                                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


AUTOGROUP = Path("/proc/self/autogroup")
# Trainings, timings and dataset preparation yield the CPU to the server: a click, a page or a prediction is
# served at once, while a worker alone on the machine runs at full speed (niceness only matters when both
# want the same core).
WORKER_NICENESS = 10


def yield_cpu(niceness: int = WORKER_NICENESS) -> None:
    """Lower this process's priority so that the server it works for is served first.

    Where the kernel groups processes by session for scheduling (Linux's autogroup, on by default on most
    distributions), a process in a session of its own, as launch_module starts a worker, is weighed against
    the server's whole session, and its own nice value counts only inside its group. So a session leader
    also sets its group's nice value. Any other process leaves the group alone: it is the server's.
    """
    os.nice(niceness)
    if os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError):  # no autogroup here (another kernel, or /proc read-only)
            AUTOGROUP.write_text(str(niceness))


def pid_alive(pid) -> bool:
    """Whether a process with this pid exists (one of another user's counts too); False for what is not a pid."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True
