"""Safe image decoding shared by training data, prediction and the dashboard.

Every path that turns bytes into pixels goes through `decode_image`, so training and prediction see the
same pixels: EXIF orientation applied, first frame of animations, every mode converted to 8-bit RGB, and
limits against decompression bombs checked before any pixel is decoded. Those limits hold before Pillow
reads more than a header: the format is judged by the file's first bytes and only the five allowed
formats' decoders may open it (Pillow's ICO and some others decode the whole picture while opening);
the pixel count, shape and the memory a decode would take (bit depth included) are checked from the
header; and a process-wide budget bounds the memory of the decodes running at once (one server process
serves every visitor, each upload and each dataset worker decoding in its own thread).
"""
from __future__ import annotations

import io
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.settings.errors import ImageError
from core.settings.text import megabytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
MAX_PIXELS = 64_000_000  # 8000x8000; a real 8000x6000 photo fits, a 30000x30000 bomb does not
MAX_BYTES = 50 * 1024 * 1024
MAX_ASPECT = 10_000  # a 5000x2 strip (2500:1) is fine; a 1e6x1 strip is not an image anyone means
# Memory one decode may take (decode_cost): an 8000x8000 RGB image needs 0.47 GB (a JPEG decoded for a
# small input far less), a 16-bit greyscale one 0.34 GB, an RGBA one 0.97 GB: refused.
MAX_DECODE_BYTES = 900 * 10**6
# Memory all decodes running at once in this process may take; a decode waits for room rather than
# pushing a small host over its limit when several visitors upload large images together.
DECODE_BUDGET_BYTES = 10**9

# Pillow's own bomb check stays on, at our limit, for every image any code in this process opens with
# Image.open (Streamlit's st.image, TFDS). It warns above MAX_IMAGE_PIXELS and raises only above twice it,
# without the image's dimensions, so _open constructs the allowed format's reader itself (no decoding
# happens there) and applies the exact limit with a message that names the size.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# The formats the Lab decodes, by the bytes they start with; everything else is refused unopened.
_SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
}
# Bytes a pixel of each mode takes in Pillow's memory; other modes take 4 (RGB is stored as RGBX).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_DEEP_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_STRIP_PIXELS = 1 << 20  # pixels converted to the result at a time
_DECODE_OVERHEAD = 32 * 10**6  # a strip's copies (up to 16 bytes a pixel) and the decoder's buffers
# 16-bit grey to 8 bits by table lookup: one byte out per pixel, no float copies of a large image.
_SCALE_16 = np.floor(np.arange(65536, dtype=np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
_CLIP_8 = np.minimum(np.arange(65536), 255).astype(np.uint8)


def _reader(fmt: str):
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

    return {"JPEG": JpegImagePlugin.JpegImageFile, "PNG": PngImagePlugin.PngImageFile,
            "GIF": GifImagePlugin.GifImageFile, "BMP": BmpImagePlugin.BmpImageFile,
            "WEBP": WebPImagePlugin.WebPImageFile}[fmt]


def sniff_format(head: bytes) -> str | None:
    """The allowed format these first bytes (at least 12) begin, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for fmt, starts in _SIGNATURES.items() if head.startswith(starts)), None)


def decode_cost(size: tuple[int, int], mode: str, transparent: bool = False) -> int:
    """Bytes a decode of an image of this size and mode holds at its peak, from the header alone.

    Per pixel: the decoded picture (its mode's bytes); for modes other than RGB and greyscale, an RGB or
    RGBA copy inside Pillow and, with transparency, a white background to lay it on (4 bytes each); and
    the 3-byte array handed on, filled a strip at a time; plus the strips' and decoder's own buffers.
    """
    width, height = size
    copies = 0 if mode in ("RGB", "L", *_DEEP_GREY) else 8 if transparent or mode in ("RGBA", "LA", "PA") else 4
    return width * height * (_MODE_BYTES.get(mode, 4) + copies + 3) + _DECODE_OVERHEAD


class _Budget:
    """Bytes of decoding memory shared by the threads of one process."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, amount: int):
        with self._cond:
            self._cond.wait_for(lambda: self.used + amount <= self.total)
            self.used += amount
        try:
            yield
        finally:
            with self._cond:
                self.used -= amount
                self._cond.notify_all()


_budget = _Budget(DECODE_BUDGET_BYTES)


def _open(data: bytes | BinaryIO, name: str, size: int | None = None) -> Image.Image:
    size = len(data) if isinstance(data, bytes) else size
    if not size:
        raise ImageError(f"{name}: the file is empty (0 bytes).")
    if size > MAX_BYTES:
        raise ImageError(f"{name}: the file is {size / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB.")
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    head = stream.read(16)
    stream.seek(-len(head), io.SEEK_CUR)
    fmt = sniff_format(head)
    if fmt is None:
        raise ImageError(f"{name}: not a readable image (its content is not JPEG, PNG, BMP, GIF or WebP, whatever "
                         "its name says).")
    try:
        img = _reader(fmt)(stream)
    except (UnidentifiedImageError, SyntaxError):  # Pillow's readers raise SyntaxError for a wrong header
        raise ImageError(f"{name}: not a readable image (expected JPEG, PNG, BMP, GIF or WebP).") from None
    except Exception as exc:  # PIL raises many types for malformed headers
        raise ImageError(f"{name}: not a readable image ({exc.__class__.__name__}).") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: the image has no pixels ({width}x{height}).")
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{name}: {width}x{height} pixels is over the {MAX_PIXELS // 1_000_000} megapixel limit "
            "(a decompression bomb, or a photo to downscale first)."
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageError(f"{name}: a {width}x{height} image is too elongated to classify.")
    return img


def decode_image(data: bytes, name: str = "image", min_side: int | None = None) -> np.ndarray:
    """Decode bytes into an upright HxWx3 uint8 RGB array (read-only for most photos: copy it to change
    it), or raise ImageError saying why not.

    min_side lets JPEG decoding skip detail that a later resize would throw away (libjpeg's DCT scaling
    keeps at least min_side pixels on each side), which makes large photos decode several times faster.
    """
    img = _open(data, name)
    try:
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = max(min_side / w, min_side / h)
            img.draft("RGB", (max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))))
        cost = decode_cost(img.size, img.mode, "transparency" in img.info)
        if cost > MAX_DECODE_BYTES:
            width, height = img.size
            raise ImageError(f"{name}: decoding this {width}x{height} {img.mode} image would take "
                             f"{megabytes(cost)} of memory, over the {megabytes(MAX_DECODE_BYTES)} limit; "
                             "downscale it first.")
        with _budget.hold(cost):
            return _decode(img, name)
    except ImageError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data surfaces only while decoding
        raise ImageError(f"{name}: the image data is corrupt or truncated ({exc.__class__.__name__}).") from None


def _to_array(img: Image.Image) -> np.ndarray:
    """An RGB, 8-bit greyscale or deep greyscale image as HxWx3 uint8, built a strip at a time so that no
    whole-image copy is made on the way; an RGB image of one strip comes back as a read-only view of
    Pillow's bytes (a copy would cost a third of decoding it)."""
    width, height = img.size
    lookup = None
    if img.mode in _DEEP_GREY:
        # scale to 8 bits instead of clipping everything to white
        lookup = _SCALE_16 if img.getextrema()[1] > 255 else _CLIP_8
    rows = max(1, _STRIP_PIXELS // width)
    if rows >= height and img.mode == "RGB":
        return _pixels(img)  # one strip, already in the result's layout: no copy to make
    out = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, rows):
        # An image of one strip (nearly every photo) is read whole: cropping it would copy it for nothing.
        strip = img if rows >= height else img.crop((0, top, width, min(height, top + rows)))
        part = _pixels(strip)
        if lookup is not None:
            part = lookup[np.clip(part, 0, 65535).astype(np.uint16)]
        out[top:top + part.shape[0]] = part[..., None] if part.ndim == 2 else part
    return out


def _pixels(img: Image.Image) -> np.ndarray:
    """The image's pixels as an array that may share Pillow's bytes (read-only); for 8-bit RGB and greyscale
    reading tobytes directly takes half the time of np.asarray, which copies the same bytes again."""
    width, height = img.size
    if img.mode == "RGB":
        return np.frombuffer(img.tobytes(), np.uint8).reshape(height, width, 3)
    if img.mode == "L":
        return np.frombuffer(img.tobytes(), np.uint8).reshape(height, width)
    return np.asarray(img)


def _decode(img: Image.Image, name: str) -> np.ndarray:
    """The opened image's first frame as upright 8-bit RGB; exceptions are decode_image's to word."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img.seek(0)  # first frame of an animation
        img.load()
    ImageOps.exif_transpose(img, in_place=True)  # a copy only when the picture must turn
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        background = Image.new("RGB", img.size, (255, 255, 255))
        rgba = img.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        img = background
    elif img.mode not in ("RGB", "L", *_DEEP_GREY):
        img = img.convert("RGB")
    arr = _to_array(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(f"{name}: decoded to an unexpected shape {arr.shape}.")
    return arr


def image_size(data: bytes, name: str = "image") -> tuple[int, int]:
    """(width, height) from the header alone, with the same checks as decode_image."""
    return _open(data, name).size


def file_image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, reading only its header."""
    try:
        with open(path, "rb") as fh:
            return _open(fh, path.name, size=path.stat().st_size).size
    except OSError as exc:
        raise ImageError(f"{path.name}: cannot be read ({exc.strerror}).") from None


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def upscaling_note(sizes: list[tuple[int, int]], image_size: int, sampled: bool = False) -> str | None:
    """A sentence when images are far smaller than the model's input (at most half its side), else None.

    Resizing a 25x25 image to 224x224 adds no detail, only blur, and nothing else tells the user it happens.
    """
    small = [(w, h) for w, h in sizes if min(w, h) * 2 <= image_size]
    if not small:
        return None
    w, h = min(small, key=lambda s: min(s))
    of = f"{len(small):,} of {len(sizes):,} {'sampled ' if sampled else ''}images"
    return (f"{of} are at most half the model's input side and get enlarged to {image_size}x{image_size} "
            f"(the smallest, {w}x{h}, about {image_size / min(w, h):.0f}x): enlarging adds blur, not detail. "
            "A smaller image size on Experiments trains faster on such images with the same information.")
