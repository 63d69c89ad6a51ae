"""Downloading and preparing a TFDS dataset: one at a time, in a worker process, with progress anyone can read.

`python -m core.data.downloads NAME DATA_DIR` is the worker. It holds an exclusive lock on
DATA_DIR/NAME.lab-download.lock (fcntl.flock) for its whole life and keeps NAME.lab-download.json beside it
up to date: bytes of the archive so far, then examples prepared, or the one-line error it ended with. Every
dashboard session and the CLI follow that file, so a second Load waits for the first download instead of
starting another. The kernel drops the lock when the worker dies, so a cancelled or killed download never
blocks the next try, and the next worker removes what the last one left half-written.

The article's archive can come from a mirror (LAB_CATS_VS_DOGS_URL, with LAB_CATS_VS_DOGS_CHECKSUM
"SIZE SHA256" when the mirror's file is not the registered one) or from a copy placed in the manual
folder (DATA_DIR/downloads/manual/kagglecatsanddogs_5340.zip), which TFDS checks and uses as it is.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from core.settings.config import ARTICLE_DATASET
from core.settings.errors import DataError, OfflineError, error_line
from core.settings.files import is_disk_full, read_json, remove_path, try_lock, write_json
from core.settings.processes import launch_module, yield_cpu
from core.settings.text import duration, megabytes, percent

ARTICLE_ARCHIVE = "kagglecatsanddogs_5340.zip"
MIRROR_ENV = "LAB_CATS_VS_DOGS_URL"
CHECKSUM_ENV = "LAB_CATS_VS_DOGS_CHECKSUM"
# Archive plus its prepared TFRecords (cats_vs_dogs: 825 MB of zip became ~1.1 GB of records).
SPACE_FACTOR = 2.5
POLL_SECONDS = 0.5
# TFDS holds up to 1 GB of prepared examples in memory before it spills them to disk; beside a server on a
# 2.7 GB host that is too much (benchmarks/README.md, C1, has the peaks with and without this cap). The order
# of the examples does not depend on it.
SHUFFLE_BUFFER_BYTES = 64 * 1024**2
LOCK_WAIT_SECONDS = 3.0  # a new worker's patience with a lock that a status check holds for a moment
EXIT_BUSY = 3  # the worker found another one holding the lock
STATUS_MAX_BYTES = 64 * 1024  # a status is a few hundred bytes; anything larger was not written by a worker

STARTING, DOWNLOADING, PREPARING, DONE, FAILED, CANCELLED = (
    "starting", "downloading", "preparing", "done", "failed", "cancelled")


@dataclass(frozen=True)
class Archive:
    """One file a TFDS builder downloads, with the size and checksum it must have when they are known."""

    url: str
    size: int | None
    sha256: str | None
    filename: str


@dataclass(frozen=True)
class DownloadStatus:
    """Where one dataset's download and preparation stand, as its worker last wrote it."""

    dataset: str
    phase: str = STARTING
    done: int = 0  # bytes while downloading, examples while preparing
    total: int | None = None
    rate: float | None = None  # per second, over the last few seconds
    url: str = ""
    pid: int = 0
    error: str = ""
    updated: float = 0.0

    @property
    def fraction(self) -> float | None:
        if self.phase == DONE:
            return 1.0
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    @property
    def eta(self) -> float | None:
        if not self.total or not self.rate or self.done >= self.total:
            return None
        return (self.total - self.done) / self.rate

    def line(self) -> str:
        """One readable line: what is happening, how far, how fast, how long is left."""
        left = f", about {duration(self.eta)} left" if self.eta is not None else ""
        if self.phase == DOWNLOADING:
            of = f" of {megabytes(self.total)} ({percent(self.fraction, 0)})" if self.total else ""
            speed = f", {megabytes(self.rate)}/s" if self.rate else ""
            return f"Downloading {self.url}: {megabytes(self.done)}{of}{speed}{left}"
        if self.phase == PREPARING:
            of = f" of {self.total:,}" if self.total else ""
            return f"Preparing TFDS '{self.dataset}': {self.done:,}{of} examples written{left}"
        if self.phase == DONE:
            return f"TFDS '{self.dataset}' is downloaded and prepared."
        if self.phase in (FAILED, CANCELLED):
            return self.error or f"The download of TFDS '{self.dataset}' was cancelled."
        return f"Starting the download of TFDS '{self.dataset}' ..."


# What each field of a status file must be (never a bool), so that a damaged file reads as no status.
_STATUS_TYPES = {"dataset": str, "phase": str, "done": int, "total": (int, type(None)),
                 "rate": (int, float, type(None)), "url": str, "pid": int, "error": str, "updated": (int, float)}


def _worker_file(data_dir: Path, name: str, suffix: str) -> Path:
    """The worker's lock, status ("json") or log file of the dataset."""
    return Path(data_dir) / f"{name}.lab-download.{suffix}"


def manual_dir(data_dir: Path) -> Path:
    """TFDS's manual download folder: a verified copy of an archive placed here is used instead of the URL."""
    return Path(data_dir) / "downloads" / "manual"


def read_status(data_dir: Path, name: str) -> DownloadStatus | None:
    """The worker's last status of the dataset; None when there is none, or none that reads as one."""
    raw = read_json(_worker_file(data_dir, name, "json"), dict, max_bytes=STATUS_MAX_BYTES)
    if raw is None:
        return None
    values = {k: raw[k] for k in DownloadStatus.__dataclass_fields__ if k in raw}
    if "dataset" not in values or any(isinstance(v, bool) or not isinstance(v, _STATUS_TYPES[k])
                                      for k, v in values.items()):
        return None
    return DownloadStatus(**values)


def _write_status(data_dir: Path, status: DownloadStatus) -> None:
    write_json(_worker_file(data_dir, status.dataset, "json"), asdict(replace(status, updated=time.time())),
               indent=None)


def is_running(data_dir: Path, name: str) -> bool:
    """True while a worker holds the dataset's download lock (a dead worker holds nothing)."""
    path = _worker_file(data_dir, name, "lock")
    if not path.is_file():
        return False
    with open(path, "a+") as handle:
        return not try_lock(handle)  # closing the file drops a lock taken here


# --- what a builder will download ---------------------------------------------------------------------------

def _parse_checksum(text: str) -> tuple[int, str]:
    size, _, sha = text.strip().partition(" ")
    if not size.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", sha.strip()):
        raise DataError(f"{CHECKSUM_ENV} should be 'SIZE SHA256' (bytes and 64 hex digits), not '{text.strip()}'.")
    return int(size), sha.strip()


def planned_archives(builder) -> list[Archive]:
    """The archives `builder.download_and_prepare` will fetch, as far as TFDS has them registered.

    For the article's dataset a mirror set in LAB_CATS_VS_DOGS_URL replaces the registered URL; it must
    serve the registered file unless LAB_CATS_VS_DOGS_CHECKSUM gives the size and checksum of its own.
    """
    infos = type(builder).url_infos or {}
    archives = [Archive(url, int(info.size), info.checksum, info.filename or url.rsplit("/", 1)[-1])
                for url, info in infos.items()]
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if builder.name == ARTICLE_DATASET and mirror:
        size, sha = (archives[0].size, archives[0].sha256) if archives else (None, None)
        if os.environ.get(CHECKSUM_ENV, "").strip():
            size, sha = _parse_checksum(os.environ[CHECKSUM_ENV])
        archives = [Archive(mirror, size, sha, ARTICLE_ARCHIVE)]
    return archives


def _article_module():
    """TFDS's cats_vs_dogs module, imported after TFDS itself so that its imports leave other threads alone."""
    from core.data.tfds_import import tfds

    tfds()
    import tensorflow_datasets.image_classification.cats_vs_dogs as module

    return module


def _use_archives(builder, archives: list[Archive]) -> None:
    """Point the builder at a mirror (in this worker process only) and register what the file must be."""
    from tensorflow_datasets.core.download.checksums import UrlInfo
    from tensorflow_datasets.core.utils import Size

    if builder.name == ARTICLE_DATASET and archives:
        _article_module()._URL = archives[0].url
    infos = type(builder).url_infos
    if infos is None:
        return
    for archive in archives:
        if archive.size is not None and archive.sha256:
            infos[archive.url] = UrlInfo(size=Size(archive.size), checksum=archive.sha256, filename=archive.filename)


def dropped_while_preparing(name: str) -> dict[str, int]:
    """Files TFDS leaves out of `name` while preparing it, by reason, where the builder says how many."""
    if name != ARTICLE_DATASET:
        return {}
    return {"without a JFIF header (dropped by TFDS)": _article_module()._NUM_CORRUPT_IMAGES}


def configured_hosts() -> tuple:
    """The hosts that downloads go to: TFDS's and TF Hub's, and a mirror of the article's archive if one is set."""
    from core.data.network import DOWNLOAD_HOSTS, hosts_of

    return tuple(DOWNLOAD_HOSTS) + hosts_of([os.environ.get(MIRROR_ENV, "")])


def manual_copies(data_dir: Path, archives: list[Archive]) -> list[Path]:
    """The archives already placed in the manual folder; all of them present means no network is needed."""
    return [manual_dir(data_dir) / a.filename for a in archives if (manual_dir(data_dir) / a.filename).is_file()]


# --- the worker -----------------------------------------------------------------------------------------------

def _remove_leftovers(data_dir: Path, name: str) -> None:
    """Remove the half-written downloads and preparations of earlier workers that were cancelled or killed."""
    found = list((Path(data_dir) / "downloads").glob("**/*.tmp.*"))
    found += [p for p in (Path(data_dir) / name).glob("**/*") if p.is_dir() and "incomplete" in p.name]
    for path in found:
        remove_path(path)


def _downloaded_bytes(data_dir: Path) -> int:
    total = 0
    for folder in (Path(data_dir) / "downloads").glob("**/*.tmp.*"):
        for path in folder.glob("*"):
            try:
                total += path.stat().st_size
            except OSError:
                pass
    return total


def _expected_examples(data_dir: Path, name: str, archives: list[Archive]) -> int | None:
    """Examples cats_vs_dogs will write: its images minus the non-JFIF files TFDS drops (it insists on the count)."""
    if name != ARTICLE_DATASET or not archives:
        return None
    import zipfile

    module = _article_module()
    from tensorflow_datasets.core.download.resource import get_dl_fname

    archive = archives[0]
    candidates = manual_copies(data_dir, archives)
    if archive.sha256:
        candidates.append(Path(data_dir) / "downloads" / name / get_dl_fname(archive.url, archive.sha256))
    for path in candidates:
        try:
            with zipfile.ZipFile(path) as opened:
                images = sum(1 for n in opened.namelist() if module._NAME_RE.match(os.path.normpath(n)))
            return max(0, images - module._NUM_CORRUPT_IMAGES)
        except (OSError, zipfile.BadZipFile):
            continue
    return None


class _Reporter:
    """The worker's status file, rewritten every POLL_SECONDS with a rate over the last few seconds."""

    def __init__(self, data_dir: Path, status: DownloadStatus):
        self.data_dir = data_dir
        self.status = status
        self.samples: list[tuple[float, int]] = []
        self.lock = threading.Lock()

    def update(self, **changes) -> None:
        with self.lock:
            if "phase" in changes and changes["phase"] != self.status.phase:
                self.samples = []
            status = replace(self.status, **changes)
            now = time.monotonic()
            self.samples = [s for s in self.samples if now - s[0] <= 5.0] + [(now, status.done)]
            first = self.samples[0]
            rate = (status.done - first[1]) / (now - first[0]) if now - first[0] >= 0.5 else self.status.rate
            self.status = replace(status, rate=rate if rate and rate > 0 else None)
            _write_status(self.data_dir, self.status)


def _failure_message(exc: BaseException, name: str, url: str, data_dir: Path, done: int, total: int | None,
                     phase: str = DOWNLOADING) -> str:
    """One line naming the URL and what to do next, for the ways a download is known to fail."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    fallback = (f"put a copy of {ARTICLE_ARCHIVE} in {manual_dir(data_dir)}, set {MIRROR_ENV} to a mirror, "
                "or use the images as a folder (source folder:PATH/PetImages)" if name == ARTICLE_DATASET
                else "use a folder of images (source folder:PATH)")
    code = re.search(r"HTTP code: (\d+)", text)
    if code:
        gone = " (the file is no longer at that address)" if code.group(1) in ("404", "410") else ""
        return f"{url} answered HTTP {code.group(1)}{gone}. Next: {fallback}."
    if any(type(e).__name__ == "NonMatchingChecksumError" for e in chain):
        return (f"The file downloaded from {url} does not match its registered size and checksum (changed or "
                f"damaged), so it was not used. Next: try again later, or {fallback}.")
    if any(is_disk_full(e) for e in chain) or "No space left" in text:
        free = shutil.disk_usage(data_dir).free if Path(data_dir).exists() else 0
        need = f", about {megabytes(total * SPACE_FACTOR)} needed" if total else ""
        doing = "downloading" if phase != PREPARING else "preparing the examples of"
        return (f"The disk ran out of space while {doing} {url} into {data_dir} ({megabytes(free)} free{need}). "
                "Next: free space there or set LAB_CACHE_DIR to a larger disk, then load again.")
    broken = ("ChunkedEncodingError", "ProtocolError", "IncompleteRead", "ConnectionResetError", "ReadTimeout")
    if any(word in text for word in broken):
        of = f" of {megabytes(total)}" if total else ""
        return (f"The connection to {url} dropped after {megabytes(done)}{of}. Next: load again to start over "
                f"(the partial file is removed), or {fallback}.")
    if any(word in text for word in ("ConnectionError", "ConnectTimeout", "NewConnectionError", "URLError")):
        return f"Could not connect to {url}. Next: check the network and load again, or {fallback}."
    return f"Preparing TFDS '{name}' from {url} failed ({error_line(exc)}). Next: {fallback}."


def _work(name: str, data_dir: Path) -> int:
    # Preparing a dataset decodes and re-encodes every image: the pages of the server it works for go first.
    yield_cpu()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Open for the worker's whole life: closing it would drop the lock.
    lock = open(_worker_file(data_dir, name, "lock"), "a+")  # noqa: SIM115
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while not try_lock(lock):
        if time.monotonic() > deadline:
            return EXIT_BUSY
        time.sleep(0.1)
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    reporter = _Reporter(data_dir, DownloadStatus(name, STARTING, pid=os.getpid()))
    reporter.update()

    def cancelled(signum, frame) -> None:
        # The download runs in TFDS's threads, which an exception here would not stop: tidy up and leave now.
        reporter.update(phase=CANCELLED, error=f"The download of TFDS '{name}' was cancelled; load again to restart.")
        _remove_leftovers(data_dir, name)
        os._exit(1)

    signal.signal(signal.SIGTERM, cancelled)
    _remove_leftovers(data_dir, name)  # safe: holding the lock, nobody else writes here

    from core.data.tfds_import import tfds as _tfds

    tfds = _tfds()

    builder = tfds.builder(name, data_dir=str(data_dir))
    if builder.is_prepared():
        reporter.update(phase=DONE)
        return 0
    archives = planned_archives(builder)
    _use_archives(builder, archives)
    url = archives[0].url if archives else f"TFDS '{name}'"
    total = sum(a.size for a in archives) if archives and all(a.size for a in archives) else None
    reporter.update(phase=DOWNLOADING, url=url, total=total)
    stop = threading.Event()
    counted = {"examples": 0, "preparing": False}

    def watch() -> None:
        while not stop.wait(POLL_SECONDS):
            if counted["preparing"]:
                reporter.update(done=counted["examples"])
            else:
                # max: the finished file leaves its temporary folder, and the bar must not fall back to zero
                reporter.update(done=max(reporter.status.done, _downloaded_bytes(data_dir)))

    generate = builder._generate_examples

    def counting(*args, **kwargs):
        # The first example means the archive is in: from here on progress counts examples, not bytes.
        if not counted["preparing"]:
            counted["preparing"] = True
            reporter.update(phase=PREPARING, done=0, total=_expected_examples(data_dir, name, archives))
        for item in generate(*args, **kwargs):
            counted["examples"] += 1
            yield item

    builder._generate_examples = counting
    from tensorflow_datasets.core import shuffle

    shuffle.MAX_MEM_BUFFER_SIZE = min(shuffle.MAX_MEM_BUFFER_SIZE, SHUFFLE_BUFFER_BYTES)
    watcher = threading.Thread(target=watch, name="lab-download-progress", daemon=True)
    watcher.start()
    try:
        if total and not manual_copies(data_dir, archives):
            free = shutil.disk_usage(data_dir).free
            if free < total * SPACE_FACTOR:
                raise OSError(errno.ENOSPC, "No space left on device (checked before downloading)")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir(data_dir))))
    except BaseException as exc:
        stop.set()
        watcher.join()
        done = max(reporter.status.done if reporter.status.phase == DOWNLOADING else 0, _downloaded_bytes(data_dir))
        message = _failure_message(exc, name, url, data_dir, done, total, reporter.status.phase)
        _remove_leftovers(data_dir, name)
        reporter.update(phase=FAILED, error=message)
        print(message, file=sys.stderr)
        return 1
    stop.set()
    watcher.join()
    reporter.update(phase=DONE, done=counted["examples"])
    return 0


# --- starting, following and cancelling a worker --------------------------------------------------------------

_workers: dict[tuple[str, str], subprocess.Popen] = {}  # this process's workers, shared by its sessions
_workers_lock = threading.Lock()


def open_builder(name: str, data_dir: Path):
    """The TFDS builder of `name` in data_dir, or a DataError saying what is wrong with the name."""
    from core.data.tfds_import import tfds as _tfds
    tfds = _tfds()

    try:
        return tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"TFDS has no dataset named '{name}'. Check the name in the TFDS catalog "
            "(e.g. cats_vs_dogs, tf_flowers), or use a folder of images."
        ) from None
    except Exception as exc:
        raise DataError(f"TFDS could not open '{name}': {exc}") from None


def preparation(name: str, data_dir: Path | None = None, poll: float = POLL_SECONDS) -> Iterator[DownloadStatus]:
    """Download and prepare TFDS `name` once, yielding its status about every `poll` seconds until ready.

    Nothing is yielded when it is already prepared. The network is only asked when an archive must come
    from it: the hosts of the URLs that will be downloaded, so a mirror counts, and not at all when copies
    of every archive lie in the manual folder.
    """
    from core.data.network import DOWNLOAD_HOSTS, hosts_of
    from core.settings.paths import tfds_dir

    data_dir = Path(data_dir) if data_dir else tfds_dir()
    builder = open_builder(name, data_dir)
    if builder.is_prepared() and not is_running(data_dir, name):
        return
    archives = planned_archives(builder)
    local = bool(archives) and len(manual_copies(data_dir, archives)) == len(archives)
    hosts = () if local else hosts_of(a.url for a in archives) or DOWNLOAD_HOSTS
    yield from follow_download(name, data_dir, builder.is_prepared, hosts, poll)


def follow_download(name: str, data_dir: Path, is_prepared: Callable[[], bool], hosts: tuple = (),
                    poll: float = POLL_SECONDS) -> Iterator[DownloadStatus]:
    """Statuses of the dataset's download until it is prepared, starting a worker unless one is running.

    A worker already running (another session, the CLI) is followed, never doubled. Raises DataError with
    the worker's one-line message when the download this call followed failed or was cancelled, and
    OfflineError before starting a worker when none of `hosts` answers.
    """
    from core.data.network import is_online, offline_message

    data_dir = Path(data_dir)
    key = (str(data_dir), name)
    followed = False
    while True:
        with _workers_lock:
            proc = _workers.get(key)
            if proc is not None and proc.poll() is not None:
                del _workers[key]
                proc = None
        running = is_running(data_dir, name)
        status = read_status(data_dir, name)
        ours = proc is not None and status is not None and status.pid == proc.pid
        ended = status is not None and status.phase in (DONE, FAILED, CANCELLED)
        # A worker of ours that has not taken the lock yet, or has left it and is only exiting, still counts.
        if running or (proc is not None and not (ours and ended)):
            followed = True
            yield status if status is not None and (running or ours) else DownloadStatus(name, STARTING)
            time.sleep(poll)
            continue
        if status is not None and followed and status.phase in (FAILED, CANCELLED):
            raise DataError(status.error or DownloadStatus(name, CANCELLED).line())
        if is_prepared():
            if status is not None and status.phase == DONE:
                yield status
            return
        if followed:
            log = _worker_file(data_dir, name, "log")
            raise DataError(f"The download of TFDS '{name}' stopped before it finished (its worker process ended; "
                            f"its output is in {log}). Load again to start over.")
        if hosts and not is_online(hosts):
            raise OfflineError(offline_message(f"the TFDS dataset '{name}'"))
        with _workers_lock:
            finished = _workers.pop(key, None)
        if finished is not None:
            finished.wait()  # the last worker has written its end and is only exiting
        with _workers_lock:
            if key not in _workers:  # another session of this process may have started one meanwhile
                data_dir.mkdir(parents=True, exist_ok=True)
                # A session of its own: a page's rerun or a closed tab does not stop the download; `cancel` does.
                _workers[key] = launch_module("core.data.downloads", [name, data_dir],
                                              _worker_file(data_dir, name, "log"), append_log=False,
                                              env_defaults={"TF_CPP_MIN_LOG_LEVEL": "2"})
        followed = True


def cancel(name: str, data_dir: Path, wait: float = 10.0) -> bool:
    """Stop the dataset's running download (whoever started it); True if one was running."""
    status = read_status(data_dir, name)
    if not is_running(data_dir, name) or status is None or not status.pid:
        return False
    try:
        os.kill(status.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait
    while is_running(data_dir, name) and time.monotonic() < deadline:
        time.sleep(0.1)
    if is_running(data_dir, name):
        # Stuck where the signal handler cannot run: kill it; the next worker removes what it left.
        with contextlib.suppress(ProcessLookupError):
            os.kill(status.pid, signal.SIGKILL)
    with _workers_lock:
        proc = _workers.pop((str(Path(data_dir)), name), None)
    if proc is not None:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    return True


if __name__ == "__main__":  # the worker: python -m core.data.downloads NAME DATA_DIR
    sys.exit(_work(sys.argv[1], Path(sys.argv[2])))
