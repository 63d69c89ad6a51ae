"""Cold start: from pressing Load on an empty cache to a ready cats_vs_dogs, on the cloud preset.

    python -m benchmarks --cold-start [--cold-start-images 25000]

A stand-in for the real download is generated once into benchmarks/work/cold-start/: a zip in the
layout of kagglecatsanddogs_5340.zip (PetImages/Cat, PetImages/Dog, 25,000 files of which 1,738 are
JPEGs without a JFIF header, which TFDS drops, as in the real one) whose photo-like JPEGs have the real
archive's average size (~33 KB). Its entries cycle through a pool of distinct generated photos: TFDS
decodes and re-encodes every entry, so repeats cost what new photos would. It is served on loopback
(LAB_CATS_VS_DOGS_URL) and a separate process does what the Dataset page's Load does, after importing
what a dashboard server holds: follow the download worker until the dataset is prepared, open it
(counting its classes) and read the image sizes the page charts. Resident memory of that process and of
the download worker is sampled every 0.2 s; the peak of their sum is what the host's limit sees.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

REAL_FILES = 25_000  # kagglecatsanddogs_5340.zip: 12,500 per class (plus two Thumbs.db)
NON_JFIF = 1_738  # TFDS's cats_vs_dogs insists on dropping exactly this many
POOL = 2_500  # distinct photos at most; a tenth of the files in smaller archives
QUALITY = 91  # ~33 KB per photo, the real archive's average (824.9 MB / 25,000)


def make_archive(folder: Path, files: int = REAL_FILES, say=print) -> dict:
    """The stand-in zip (reused when a previous run wrote the same one) and its size, checksum and counts."""
    from benchmarks.workload import PHOTO_SIZES, photo_like

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"kagglecatsanddogs-{files}.zip"
    stamp = folder / f"kagglecatsanddogs-{files}.json"
    if stamp.is_file() and path.is_file():
        info = json.loads(stamp.read_text())
        if info.get("size") == path.stat().st_size:
            return info
    if files <= NON_JFIF:
        raise SystemExit(f"--cold-start-images must be more than {NON_JFIF} (the files TFDS drops).")
    rng = np.random.default_rng(0)
    pool = []
    for i in range(min(POOL, files // 10)):
        if i % 250 == 0:
            say(f"  generating photos {i:,}/{min(POOL, files // 10):,} ...")
        w, h = PHOTO_SIZES[int(rng.integers(len(PHOTO_SIZES)))]
        buffer = io.BytesIO()
        photo_like(rng, w, h).save(buffer, "JPEG", quality=QUALITY)
        pool.append(buffer.getvalue())
    non_jfif = set(np.random.default_rng(1).choice(files, NON_JFIF, replace=False).tolist())
    tmp = path.with_suffix(".tmp")
    say(f"  writing {files:,} files into {path.name} ...")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("CDLA-Permissive-2.0.pdf", b"%PDF-1.4")
        archive.writestr("readme[1].txt", b"Cats and dogs.")
        for i in range(files):
            cls, number = ("Cat", i // 2) if i % 2 == 0 else ("Dog", i // 2)
            data = pool[i % len(pool)]
            if i in non_jfif:
                length = int.from_bytes(data[4:6], "big")
                data = data[:2] + data[4 + length:]  # the APP0 (JFIF) segment removed: TFDS skips it
            archive.writestr(f"PetImages/{cls}/{number}.jpg", data)
        for cls in ("Cat", "Dog"):
            archive.writestr(f"PetImages/{cls}/Thumbs.db", b"\xd0\xcf\x11\xe0")
    os.replace(tmp, path)
    digest = hashlib.sha256()
    with open(path, "rb") as opened:
        for block in iter(lambda: opened.read(1 << 20), b""):
            digest.update(block)
    info = {"path": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest(), "files": files,
            "examples": files - NON_JFIF, "distinct_photos": len(pool)}
    stamp.write_text(json.dumps(info))
    return info


def _serve(path: Path):
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(path, "rb") as opened:
                shutil.copyfileobj(opened, self.wfile, 1 << 20)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _tree_rss(root_pid: int) -> dict[int, int]:
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for proc in procs:
        try:
            out[proc.pid] = proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return out


def measure(work: Path, files: int = REAL_FILES, say=print) -> dict:
    """Generate (or reuse) the archive, serve it, run the Load in a fresh process on an empty cache."""
    info = make_archive(work / "cold-start", files, say)
    cache = work / "cold-start" / f"cache-{os.getpid()}"
    shutil.rmtree(cache, ignore_errors=True)
    server = _serve(Path(info["path"]))
    url = f"http://127.0.0.1:{server.server_address[1]}/kagglecatsanddogs_5340.zip"
    env = dict(os.environ, LAB_PRESET="cloud", LAB_CACHE_DIR=str(cache), LAB_CATS_VS_DOGS_URL=url,
               LAB_CATS_VS_DOGS_CHECKSUM=f"{info['size']} {info['sha256']}", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("TFHUB_CACHE_DIR", None)
    say(f"  loading {info['files']:,} files ({info['size'] / 1e6:,.0f} MB) through the download worker ...")
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cold_start", "--child"], env=env,
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    peak = {"sum": 0, "server": 0, "worker": 0}
    while proc.poll() is None:
        rss = _tree_rss(proc.pid)
        server_rss = rss.pop(proc.pid, 0)
        peak["server"] = max(peak["server"], server_rss)
        peak["worker"] = max(peak["worker"], max(rss.values(), default=0))
        peak["sum"] = max(peak["sum"], server_rss + sum(rss.values()))
        time.sleep(0.2)
    out, _ = proc.communicate()
    server.shutdown()
    server.server_close()
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the cold-start process failed ({proc.returncode}): {out[-2000:]}")
    child = json.loads(out.strip().splitlines()[-1])
    return {**child, "archive_bytes": info["size"], "files": info["files"], "distinct_photos": info["distinct_photos"],
            "peak_sum_gb": peak["sum"] / 1e9, "peak_server_gb": peak["server"] / 1e9,
            "peak_worker_gb": peak["worker"] / 1e9, "goal_gb": 2.7, "met": peak["sum"] / 1e9 < 2.7}


def child() -> dict:
    """What the Dataset page's Load does in a server that has already imported its libraries."""
    import pandas  # noqa: F401 - a dashboard server holds these before anyone presses Load
    import plotly  # noqa: F401
    import streamlit  # noqa: F401
    import tensorflow  # noqa: F401

    from core.data.downloads import DOWNLOADING, PREPARING, preparation
    from core.data.sources import TRAIN, VALIDATION, open_source
    from core.settings.config import DataConfig

    start = time.perf_counter()
    first = {}
    for status in preparation("cats_vs_dogs", poll=0.25):
        first.setdefault(status.phase, time.perf_counter() - start)
    prepared = time.perf_counter() - start
    source = open_source(DataConfig(source="tfds:cats_vs_dogs"))
    sizes = source.image_sizes()
    ready = time.perf_counter() - start
    # Phases are seen at each poll: one shorter than a poll may be missed, and then counts as zero.
    prepare_start = first.get(PREPARING, prepared)
    download_start = first.get(DOWNLOADING, prepare_start)
    return {"seconds_to_ready": ready, "worker_start_s": download_start,
            "download_s": prepare_start - download_start, "prepare_s": prepared - prepare_start,
            "open_s": ready - prepared, "examples": source.info.split_size(TRAIN) + source.info.split_size(VALIDATION),
            "sized_images": len(sizes)}


if __name__ == "__main__" and sys.argv[1:] == ["--child"]:
    print(json.dumps(child()))
