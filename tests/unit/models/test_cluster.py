"""TF_CONFIG checks and the workers' meeting, without starting TensorFlow's cluster (tests/system/test_multiworker.py
trains real worker processes)."""
from __future__ import annotations

import json
import socket
import time

import pytest

from core.models.cluster import Cluster, meet, peer_failures, read_tf_config, runs_folder, writes_runs
from core.settings.errors import LabError


def tf_config(workers=("10.0.0.1:2222", "10.0.0.2:2222"), task_type="worker", index=0, chief=None) -> str:
    cluster = {"worker": list(workers)}
    if chief is not None:
        cluster["chief"] = list(chief)
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("text, message", [
    ("", "--strategy multiworker needs TF_CONFIG on every worker, e.g. TF_CONFIG='{\"cluster\""),
    ("{cluster: worker}", "TF_CONFIG is not valid JSON (Expecting property name"),
    ("[1, 2]", "TF_CONFIG has no cluster"),
    (json.dumps({"cluster": {"chief": ["a:1"]}, "task": {"type": "chief"}}), "TF_CONFIG has no worker list"),
    (json.dumps({"cluster": {"worker": []}, "task": {"type": "worker"}}),
     "cluster.worker must be a list of host:port addresses"),
    (tf_config(workers=["10.0.0.1"]), "has '10.0.0.1', which is not a host:port address"),
    (tf_config(workers=["a:1", "a:1"]), "lists the same address twice"),
    (tf_config(index=2), "task.index is 2, but cluster.worker lists 2 address(es): use 0 to 1"),
    (tf_config(index=-1), "task.index is -1"),
    (tf_config(index="1"), "task.index is '1'"),
    (tf_config(task_type="evaluator"), "task.type is 'evaluator'; --strategy multiworker knows only 'worker' and"),
    (tf_config(task_type="chief"), "task.type is 'chief', but its cluster has no chief list"),
    (tf_config(chief=["c:1", "d:1"]), "cluster.chief lists 2 addresses; there is at most one chief"),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker"}}),
     "cluster has a 'ps' job"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "TF_CONFIG has no task"),
])
def test_a_wrong_tf_config_is_one_line_that_says_what_to_fix(text, message):
    with pytest.raises(LabError) as caught:
        read_tf_config(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_chief_is_the_chief_task_or_else_worker_0():
    plain = read_tf_config(tf_config(index=1))
    assert plain == Cluster((), ("10.0.0.1:2222", "10.0.0.2:2222"), "worker", 1)
    assert plain.rank == 1 and not plain.is_chief and plain.peers == ("10.0.0.1:2222",)
    assert read_tf_config(tf_config(index=0)).is_chief
    with_chief = read_tf_config(tf_config(chief=["c:1"], index=0))
    assert with_chief.addresses == ("c:1", "10.0.0.1:2222", "10.0.0.2:2222")
    assert with_chief.rank == 1 and not with_chief.is_chief
    assert read_tf_config(tf_config(chief=["c:1"], task_type="chief")).is_chief


def test_the_cli_refuses_a_missing_tf_config_before_tensorflow_starts(monkeypatch, tmp_path, capsys):
    from core.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(["train", "--strategy", "multiworker", "--runs-dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --strategy multiworker needs TF_CONFIG")
    assert not (tmp_path / "runs").exists()


def test_a_peer_that_never_answers_is_named_within_the_timeout():
    me, silent = free_port(), free_port()
    cluster = read_tf_config(tf_config(workers=[f"127.0.0.1:{me}", f"127.0.0.1:{silent}"]))
    start = time.monotonic()
    with pytest.raises(LabError, match=rf"127\.0\.0\.1:{silent} did not answer within 1 s: start `python -m core"):
        meet(cluster, timeout=1.0, poll=0.1)
    assert time.monotonic() - start < 10  # bounded by the timeout, not TensorFlow's endless wait


def listening(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("", port))
    server.listen(8)
    return server


def test_workers_meet_on_their_ports_and_a_taken_port_is_refused():
    import threading

    ports = [free_port(), free_port()]
    workers = [f"127.0.0.1:{p}" for p in ports]
    results, servers = {}, []

    def worker(index: int) -> None:
        try:
            meet(read_tf_config(tf_config(workers=workers, index=index)), timeout=20.0, poll=0.05)
            results[index] = "met"
            servers.append(listening(ports[index]))  # what TensorFlow's server does next on the worker's port
        except LabError as exc:
            results[index] = str(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert results == {0: "met", 1: "met"}
        with pytest.raises(LabError, match=rf"Port {ports[0]} of this worker 0 .* is already in use by another"):
            meet(read_tf_config(tf_config(workers=workers, index=0)), timeout=1.0)
    finally:
        for server in servers:
            server.close()


def test_outside_a_cluster_runs_go_where_asked_and_errors_pass_through(tmp_path):
    assert writes_runs()
    with runs_folder(tmp_path) as folder:
        assert folder == tmp_path
    with pytest.raises(ValueError, match="unrelated"), peer_failures():
        raise ValueError("unrelated")
