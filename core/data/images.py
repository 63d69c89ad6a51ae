"""Safe image decoding shared by training data, prediction and the dashboard.

Every path that turns bytes into pixels goes through `decode_image`, so training and prediction see the
same pixels: EXIF orientation applied, first frame of animations, every mode converted to 8-bit RGB, and
limits against decompression bombs checked before any pixel is decoded.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.settings.errors import ImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
MAX_PIXELS = 64_000_000  # 8000x8000; a real 8000x6000 photo fits, a 30000x30000 bomb does not
MAX_BYTES = 50 * 1024 * 1024
MAX_ASPECT = 10_000  # a 5000x2 strip (2500:1) is fine; a 1e6x1 strip is not an image anyone means

# PIL's own bomb check warns at a lower limit and raises only at twice it; ours is explicit instead.
Image.MAX_IMAGE_PIXELS = None


def _open(data: bytes | BinaryIO, name: str, size: int | None = None) -> Image.Image:
    size = len(data) if isinstance(data, bytes) else size
    if not size:
        raise ImageError(f"{name}: the file is empty (0 bytes).")
    if size > MAX_BYTES:
        raise ImageError(f"{name}: the file is {size / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB.")
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except UnidentifiedImageError:
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
    """Decode bytes into an upright HxWx3 uint8 RGB array, or raise ImageError saying why not.

    min_side lets JPEG decoding skip detail that a later resize would throw away (libjpeg's DCT scaling
    keeps at least min_side pixels on each side), which makes large photos decode several times faster.
    """
    img = _open(data, name)
    try:
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = max(min_side / w, min_side / h)
            img.draft("RGB", (max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.seek(0)  # first frame of an animation
            img.load()
        img = ImageOps.exif_transpose(img) or img
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white
            arr = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if arr.max() > 255 else 255.0
            img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            background = Image.new("RGB", img.size, (255, 255, 255))
            rgba = img.convert("RGBA")
            background.paste(rgba, mask=rgba.getchannel("A"))
            img = background
        elif img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data surfaces only while decoding
        raise ImageError(f"{name}: the image data is corrupt or truncated ({exc.__class__.__name__}).") from None
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
