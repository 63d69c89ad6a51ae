"""Stand-ins for the download hosts, on loopback only: the cats_vs_dogs archive and a TF Hub module.

The archive has the real download's layout (PetImages/Cat, PetImages/Dog, Thumbs.db files, a licence and a
readme at the top) and its flaws: zero-byte files and JPEGs without a JFIF header, which TFDS drops (it
insists on dropping exactly as many as the real archive holds, 1,738), and a JFIF JPEG with stray bytes
before its end marker, which decodes with a warning, as in TFDS issue 2188.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
from PIL import Image

NON_JFIF_IN_REAL_ARCHIVE = 1738


@dataclass
class Archive:
    path: Path
    size: int
    sha256: str
    cats: int  # images TFDS keeps per class
    dogs: int
    zero_byte: list[str] = field(default_factory=list)

    @property
    def checksum(self) -> str:
        """The value of LAB_CATS_VS_DOGS_CHECKSUM for this file."""
        return f"{self.size} {self.sha256}"


def _jpeg(rng, size, colour) -> bytes:
    pixels = np.clip(rng.normal(colour, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def _without_jfif(data: bytes) -> bytes:
    """The same JPEG minus its APP0 (JFIF) segment: still an image, but TFDS skips it."""
    assert data[2:4] == b"\xff\xe0"
    length = int.from_bytes(data[4:6], "big")
    return data[:2] + data[4 + length:]


def petimages_zip(path: Path, per_class: int = 12, seed: int = 0, image_size=(48, 40),
                  filler_bytes: int = 0) -> Archive:
    """Write the miniature archive; filler_bytes of incompressible padding make it as big as a test needs."""
    rng = np.random.default_rng(seed)
    colours = {"Cat": (200, 80, 60), "Dog": (60, 90, 200)}
    zero_byte = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("CDLA-Permissive-2.0.pdf", b"%PDF-1.4 licence")
        archive.writestr("readme[1].txt", b"Cats and dogs.")
        number = 0
        for cls, colour in colours.items():
            for _ in range(per_class):
                archive.writestr(f"PetImages/{cls}/{number}.jpg", _jpeg(rng, image_size, colour))
                number += 1
            archive.writestr(f"PetImages/{cls}/Thumbs.db", b"\xd0\xcf\x11\xe0 thumbnails")
        stray = _jpeg(rng, image_size, colours["Dog"])
        archive.writestr(f"PetImages/Dog/{number}.jpg", stray[:-2] + b"\x00\x01\x02" + stray[-2:])
        number += 1
        for i in range(NON_JFIF_IN_REAL_ARCHIVE):
            cls = "Cat" if i % 2 else "Dog"
            name = f"PetImages/{cls}/{number}.jpg"
            if i % 3 == 0:
                archive.writestr(name, b"")
                zero_byte.append(name)
            else:
                archive.writestr(name, _without_jfif(_jpeg(rng, (8, 8), colours[cls])))
            number += 1
        if filler_bytes:
            archive.writestr("PetImages/padding.bin", rng.bytes(filler_bytes), zipfile.ZIP_STORED)
    data = path.read_bytes()
    return Archive(path, len(data), hashlib.sha256(data).hexdigest(), per_class, per_class + 1, zero_byte)


def hub_tarball(saved_model: Path) -> bytes:
    """A SavedModel folder as the .tar.gz that tfhub.dev serves for `?tf-hub-format=compressed`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for item in sorted(Path(saved_model).rglob("*")):
            tar.add(item, arcname=str(item.relative_to(saved_model)), recursive=False)
    return buffer.getvalue()


@dataclass
class Route:
    """What one path answers: a body, optionally cut off after `drop_after` bytes or sent at `rate` bytes/s."""

    body: bytes = b""
    status: int = 200
    drop_after: int | None = None
    rate: float | None = None


class StandInHost:
    """A threading HTTP server on 127.0.0.1 (random port) answering from a table of routes."""

    def __init__(self, routes: dict[str, Route] | None = None):
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[str] = []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host.requests.append(self.path)
                route = host.routes.get(self.path.split("?")[0])
                if route is None or route.status != 200:
                    self.send_error(route.status if route else 404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(route.body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                body = route.body if route.drop_after is None else route.body[:route.drop_after]
                step = 64 * 1024
                try:
                    for start in range(0, len(body), step):
                        self.wfile.write(body[start:start + step])
                        if route.rate:
                            time.sleep(step / route.rate)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if route.drop_after is not None:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
