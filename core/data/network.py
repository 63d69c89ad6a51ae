"""Fast offline detection: TFDS retries for minutes and TF Hub fails late, so ask the network first."""
from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

# Hosts that TFDS and TF Hub downloads go through, asked when no particular download is in view.
DOWNLOAD_HOSTS = ("storage.googleapis.com", "tfhub.dev", "www.kaggle.com")
OFFLINE_ALTERNATIVES = (
    "Offline alternatives: use a folder of images (source 'folder:PATH', one sub-folder per class, "
    "or upload a zip of class folders on the Dataset page), and a local SavedModel folder as the hub "
    "handle (--handle PATH). Anything downloaded once while online stays in the cache folder {cache} "
    "and works offline afterwards."
)


def can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection to host opens within timeout seconds (DNS included)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so the whole attempt runs in a thread we stop waiting for.
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


def hosts_of(urls: Iterable[str]) -> tuple[tuple[str, int], ...]:
    """(host, port) of each http(s) URL, in order and once each: the places a download will really go."""
    found: dict[tuple[str, int], None] = {}
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname:
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:  # a port that is not a number: nothing to ask
                continue
            found[(parts.hostname, port)] = None
    return tuple(found)


def is_online(hosts: Iterable[str | tuple[str, int]] = DOWNLOAD_HOSTS, timeout: float = 3.0) -> bool:
    """True as soon as any host answers; False once all have failed or timeout + 0.5 s have passed.

    A host is a name (asked on port 443) or a (name, port) pair from `hosts_of`. The hosts are tried at the
    same time: one after another, a dead network would cost each host's full timeout in turn.
    """
    targets = [(h, 443) if isinstance(h, str) else (h[0], int(h[1])) for h in hosts]
    if not targets:
        return False
    answers: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def attempt(host: str, port: int) -> None:
        try:
            answers.put(bool(can_reach(host, port, timeout=timeout)))
        except Exception:  # a failed check means "not reachable", never an error for the caller
            answers.put(False)

    for host, port in targets:
        threading.Thread(target=attempt, args=(host, port), name=f"lab-reach-{host}", daemon=True).start()
    deadline = time.monotonic() + timeout + 0.5
    for _ in targets:
        try:
            if answers.get(timeout=max(0.0, deadline - time.monotonic())):
                return True
        except queue.Empty:
            return False
    return False


def offline_message(missing: str) -> str:
    from core.settings.paths import cache_dir

    return (
        f"The network is unreachable and {missing} is not in the cache, so it cannot be downloaded. "
        + OFFLINE_ALTERNATIVES.format(cache=cache_dir())
    )
