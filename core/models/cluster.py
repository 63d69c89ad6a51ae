"""Training on several machines: MultiWorkerMirroredStrategy, configured by the TF_CONFIG environment variable.

Every machine runs the same `python -m core train --strategy multiworker ...` with its own TF_CONFIG (EXAMPLE).
Each worker keeps a full copy of the model, reads the same data pipeline and keeps its share of every global
batch (tf.data DATA sharding), and the gradients are all-reduced between the workers after every step. The
chief (the "chief" task, or worker 0 when there is none) writes the run folder; the others do the same work
in a scratch folder that is deleted, because saving a run has steps that every worker must join (the reload
check's predictions are gathered from all replicas).

TensorFlow only accepts the collective set-up before it has run anything, so `join` is called first thing in
the process. What can go wrong ends with a one-line message instead of a hang:
- TF_CONFIG absent or malformed: a LabError before TensorFlow starts (`read_tf_config`);
- a peer that never starts: the workers first meet on their ports in plain Python, with a deadline (`meet`).
  TensorFlow's own wait for its peers has none, holds the interpreter lock and ignores SIGTERM, so a peer
  lost between meeting and joining is caught by a guard process that prints why and kills the waiting one;
- a peer that dies or freezes during training: TensorFlow's coordination service aborts the collective
  steps on every survivor (docs/several-machines.md has the delays), and `peer_failures` turns that error
  into a LabError. A step that waits longer than the peer timeout fails too.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.settings.errors import LabError

TF_CONFIG = "TF_CONFIG"
JOBS = ("chief", "worker")  # the task types that train; "ps" and "evaluator" belong to other strategies
# How long a worker waits for its peers to join, and for any one collective step to complete, by default.
# The peers' start-up differs by the time each needs to import TensorFlow and open its data.
DEFAULT_PEER_TIMEOUT = 300.0
EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
           '"task": {"type": "worker", "index": 0}}\'')


@dataclass(frozen=True)
class Cluster:
    """The training tasks of TF_CONFIG, and which of them this process is."""

    chief: tuple[str, ...]  # the "chief" task's address, if TF_CONFIG names one (at most one)
    workers: tuple[str, ...]  # the "worker" tasks' addresses
    task_type: str  # "chief" or "worker"
    task_index: int

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every training task, in TensorFlow's order: the chief first, then the workers."""
        return self.chief + self.workers

    @property
    def rank(self) -> int:
        """This task's position in `addresses`."""
        return self.task_index if self.task_type == "chief" else len(self.chief) + self.task_index

    @property
    def address(self) -> str:
        return self.addresses[self.rank]

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(a for i, a in enumerate(self.addresses) if i != self.rank)

    def name(self) -> str:
        return f"{self.task_type} {self.task_index} ({self.address})"


def _addresses(value, job: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise LabError(f"TF_CONFIG's cluster.{job} must be a list of host:port addresses (got {value!r:.80}).")
    for address in value:
        host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise LabError(f"TF_CONFIG's cluster.{job} has {address!r:.80}, which is not a host:port address "
                           "(e.g. 10.0.0.1:12345).")
    return tuple(value)


def read_tf_config(text: str | None = None) -> Cluster:
    """The cluster described by TF_CONFIG (or by text), checked; LabError says what is missing or wrong."""
    text = os.environ.get(TF_CONFIG) if text is None else text
    if not text or not text.strip():
        raise LabError(f"--strategy multiworker needs TF_CONFIG on every worker, e.g. {EXAMPLE} (the same cluster "
                       "everywhere, each machine its own index).")
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise LabError(f"TF_CONFIG is not valid JSON ({exc}); it should look like {EXAMPLE}.") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise LabError(f"TF_CONFIG has no cluster: it should look like {EXAMPLE}.")
    cluster = config["cluster"]
    other = sorted(set(cluster) - set(JOBS))
    if other:
        raise LabError(f"TF_CONFIG's cluster has a {other[0]!r:.40} job; --strategy multiworker trains with 'worker' "
                       "tasks and at most one 'chief' only.")
    if "worker" not in cluster:
        raise LabError(f"TF_CONFIG has no worker list (cluster.worker); it should look like {EXAMPLE}.")
    workers = _addresses(cluster["worker"], "worker")
    chief = _addresses(cluster["chief"], "chief") if "chief" in cluster else ()
    if len(chief) > 1:
        raise LabError(f"TF_CONFIG's cluster.chief lists {len(chief)} addresses; there is at most one chief.")
    if len(set(chief + workers)) < len(chief + workers):
        raise LabError("TF_CONFIG's cluster lists the same address twice; every task needs its own host:port.")
    task = config.get("task")
    if not isinstance(task, dict):
        raise LabError("TF_CONFIG has no task: add \"task\": {\"type\": \"worker\", \"index\": N}, N being this "
                       "machine's position in cluster.worker.")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in JOBS:
        raise LabError(f"TF_CONFIG's task.type is {task_type!r:.40}; --strategy multiworker knows only 'worker' "
                       "and 'chief'.")
    if task_type not in cluster:
        raise LabError(f"TF_CONFIG's task.type is '{task_type}', but its cluster has no {task_type} list.")
    listed = len(chief) if task_type == "chief" else len(workers)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < listed:
        raise LabError(f"TF_CONFIG's task.index is {index!r:.40}, but cluster.{task_type} lists {listed} "
                       f"address(es): use 0 to {listed - 1}, a different one on each machine.")
    return Cluster(chief, workers, task_type, index)


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def answers(address: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((_host(address), _port(address)), timeout=timeout):
            return True
    except OSError:
        return False


def meet(cluster: Cluster, timeout: float, poll: float = 0.2) -> None:
    """Wait until every peer answers on its port, listening on this task's port meanwhile so they find it.

    Raises LabError naming the peers that did not answer within timeout, or if this task's port is taken.
    Nothing is accepted on the listening socket: a peer's connection completing is the whole message.
    A peer that has already met the others has handed its port to TensorFlow's server, which answers too.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            listener.bind(("", _port(cluster.address)))
        except OSError:
            raise LabError(f"Port {_port(cluster.address)} of this {cluster.name()} is already in use by another "
                           "program; stop it, or give this task another port in TF_CONFIG on every machine.") from None
        listener.listen(4 * len(cluster.addresses))
        deadline = time.monotonic() + timeout
        waiting = list(cluster.peers)
        while True:
            waiting = [a for a in waiting if not answers(a, timeout=poll)]
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(poll)
    finally:
        listener.close()
    if waiting:
        raise LabError(f"{', '.join(waiting)} did not answer within {timeout:.0f} s: start `python -m core train "
                       "--strategy multiworker` with the same arguments on every machine in TF_CONFIG (check its "
                       "addresses and the firewalls), or raise --peer-timeout.")


@dataclass(frozen=True)
class Joined:
    cluster: Cluster
    strategy: object
    timeout: float


_joined: Joined | None = None
_join_lock = threading.Lock()


def writes_runs() -> bool:
    """Whether this process writes run folders: the chief of a cluster, or any process outside one."""
    return _joined is None or _joined.cluster.is_chief


# A separate process, because TensorFlow holds the interpreter lock while it waits for the peers to join:
# no thread of this process runs meanwhile, and SIGTERM is caught and ignored.
_GUARD = """
import os, select, signal, sys
parent, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], timeout)[0]:
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
"""


def join(timeout: float = DEFAULT_PEER_TIMEOUT, stderr: int | None = None) -> Joined:
    """Read TF_CONFIG, meet the peers and create this process's MultiWorkerMirroredStrategy (once; later
    calls return it). Must run before TensorFlow runs any op.

    A peer that does not answer within timeout is a LabError. Should one vanish after answering, while
    TensorFlow waits for it, a guard process prints why (to the file descriptor stderr, the process's
    own by default) and kills this one. Collective steps that do not complete within timeout fail too.
    """
    global _joined
    with _join_lock:
        if _joined is not None:
            return _joined
        cluster = read_tf_config()
        if not timeout > 0:
            raise LabError(f"--peer-timeout must be more than 0 seconds (got {timeout}).")
        meet(cluster, timeout)
        import tensorflow as tf

        message = (f"error: the workers did not all join within {timeout:.0f} s ({', '.join(cluster.peers)} answered "
                   "but did not join: do they run this same command?); restart every worker.")
        guard = subprocess.Popen([sys.executable, "-c", _GUARD, str(os.getpid()), str(timeout), message],
                                 stdin=subprocess.PIPE, stderr=stderr)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as exc:
            raise LabError(f"The multi-worker strategy can only be set up before TensorFlow has run anything; "
                           f"start a fresh process ({str(exc)[:150]}).") from None
        finally:
            guard.stdin.close()
            guard.wait()
        _joined = Joined(cluster, strategy, timeout)
        return _joined


_PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "CancelledError", "AbortedError")


@contextlib.contextmanager
def peer_failures() -> Iterator[None]:
    """Turn the errors TensorFlow raises when a peer dies, freezes or disconnects into one LabError line.

    A no-op when this process has not joined a cluster.
    """
    try:
        yield
    except Exception as exc:
        if _joined is None or type(exc).__name__ not in _PEER_ERRORS:
            raise
        detail = str(exc)
        if "unhealthy" in detail or "heartbeat" in detail:
            why = "stopped sending heartbeats (it died or froze)"
        elif "Connection reset" in detail or "Connection refused" in detail or "Socket closed" in detail:
            why = "closed its connection (it died or was stopped)"
        elif type(exc).__name__ == "DeadlineExceededError":
            why = f"did not complete a training step within {_joined.timeout:.0f} s"
        else:
            why = "stopped answering"
        peers = ", ".join(a for a in _joined.cluster.peers if not answers(a, timeout=0.5)) or "a peer"
        raise LabError(f"Multi-worker training ended on this {_joined.cluster.name()}: {peers} {why}. No run was "
                       "written; restart every worker to train again.") from None


@contextlib.contextmanager
def runs_folder(wanted: Path) -> Iterator[Path]:
    """Where this process writes its runs: wanted on the chief (and without a cluster); elsewhere a scratch
    folder that is deleted afterwards, so the other workers leave nothing that looks like a run."""
    if writes_runs():
        yield Path(wanted)
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"lab-worker-{_joined.cluster.rank}-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def on_every_worker(strategy, value: int) -> list[int]:
    """value as every replica of a multi-worker strategy has it (one entry per replica, the chief's first);
    [value] under any other strategy.

    Where workers could take different branches that run different collective steps (features found in
    one machine's cache but not another's), they decide together; otherwise one would wait in a step the
    others never take, until the peer timeout.
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return [value]

    @tf.function  # eagerly, each collective step would warn of its overhead
    def gather(mine):
        return strategy.gather(strategy.run(tf.identity, args=(mine,)), axis=0)

    return [int(v) for v in gather(tf.constant([value], tf.int64)).numpy()]


def check_same_data(strategy, description: str) -> None:
    """LabError on every worker unless all of them describe their data the same way (class names and counts):
    different folders would give the workers different numbers of steps to take together."""
    import zlib

    if len(set(on_every_worker(strategy, zlib.crc32(description.encode())))) > 1:
        raise LabError("The workers see different datasets (their class names or image counts differ); give "
                       "every machine the same --data with the same files.")
