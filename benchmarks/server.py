"""`streamlit run` of this app on a free loopback port, for the browser tests and the live benchmark."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_server(runs_dir: Path, env: dict | None = None, name: str = "streamlit-server"):
    """`streamlit run streamlit_app.py` on a free loopback port with this runs folder; yields its URL."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    full_env = {**{k: v for k, v in os.environ.items() if k != "LAB_BOARD_READ_SECONDS"}, "LAB_WARM_WORKER": "1",
                "LAB_RUNS_DIR": str(runs_dir), "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(ARTIFACTS / f"{name}.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, proc, ARTIFACTS / f"{name}.log")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"streamlit did not start; see {log}")
        time.sleep(0.5)
