"""Images of every kind a visitor might upload, made in memory: good unusual ones and hostile ones."""
from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)

def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()

def solid(colour, size=(32, 32), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)

def noisy_jpeg(size=(64, 64), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)), "JPEG", quality=90)

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

@lru_cache(maxsize=1)
def png_bomb(side: int = 30000) -> bytes:
    """A valid one-colour 1-bit PNG of side x side pixels, written row by row without holding it decoded."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed pixels
    rows_per_block = 1000
    block = row * rows_per_block
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(block) for _ in range(side // rows_per_block))
    body += comp.compress(row * (side % rows_per_block)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")

def png_16bit_bomb(side: int = 8000, colour_type: int = 0, depth: int = 16) -> bytes:
    """A one-colour PNG of side x side pixels (16-bit greyscale by default; colour_type 6 and depth 8 for RGBA),
    written row by row: ~120 KB on disk, several bytes a pixel decoded."""
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    row = b"\x00" + b"\xff" * (side * channels * depth // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * 500) for _ in range(side // 500)) + comp.compress(row * (side % 500))
    ihdr = struct.pack(">IIBBBBB", side, side, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body + comp.flush())
            + _png_chunk(b"IEND", b""))

def ico_bomb(side: int = 20000) -> bytes:
    """An ICO file (meant to be named .png) holding one side x side PNG: Pillow's ICO reader decodes it on open."""
    inner = png_bomb(side)
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(inner), 6 + 16)
    return header + entry + inner

@lru_cache(maxsize=1)
def large_photo() -> bytes:
    """An 8000x6000 JPEG, left half reddish and right half bluish, with texture so it is not trivial."""
    h, w = 6000, 8000
    arr = np.empty((h, w, 3), np.uint8)
    arr[:, : w // 2] = RED
    arr[:, w // 2:] = BLUE
    arr[::7, :, 1] = 60  # thin green lines: real high-frequency content for the decoder
    return encode(Image.fromarray(arr), "JPEG", quality=85)

def corrupt_entropy_jpeg(seed: int) -> bytes:
    """A JPEG whose headers are intact but whose compressed scan data is replaced by random bytes."""
    good = bytearray(noisy_jpeg())
    sos = good.index(b"\xff\xda")
    scan_start = sos + 2 + int.from_bytes(good[sos + 2: sos + 4], "big")
    noise = np.random.default_rng(seed).integers(0, 256, len(good) - scan_start - 2, dtype=np.uint8)
    good[scan_start:-2] = noise.tobytes()
    return bytes(good)

def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide x 20 high with the left half red; EXIF orientation 6 shows it 20x40 with red on top."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = RED
    arr[:, 20:] = BLUE
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())

def animated_gif() -> bytes:
    frames = [solid(RED).convert("P"), solid(BLUE).convert("P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)

def palette_png() -> bytes:
    img = Image.new("P", (16, 16))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (8, 0, 16, 16))  # right half palette index 1 (blue)
    return encode(img, "PNG")

def rgba_png() -> bytes:
    img = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent black
    img.paste((255, 0, 0, 255), (0, 0, 8, 16))  # opaque red left half
    return encode(img, "PNG")

def png_16bit() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    return encode(Image.fromarray(ramp), "PNG")

def cmyk_jpeg() -> bytes:
    return encode(solid((0, 255, 255, 0), mode="CMYK"), "JPEG", quality=95)  # cyan 0, magenta+yellow: red

BAD = {
    "zero-byte.jpg": (lambda: b"", "empty"),
    "random.jpg": (lambda: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                   "not a readable image"),
    "page.png": (lambda: b"<!doctype html><html><body><h1>Not found</h1></body></html>", "not a readable image"),
    "drawing.png": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                            b'<rect width="10" height="10" fill="red"/></svg>', "not a readable image"),
    "truncated.jpg": (lambda: noisy_jpeg()[: len(noisy_jpeg()) // 2], "corrupt or truncated"),
    "bomb.png": (png_bomb, "megapixel"),
}

def assert_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)

def close(pixel, colour, tol=40) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)) <= tol))

GOOD = {
    "big.jpg": large_photo,
    "anim.gif": animated_gif,
    "palette.png": palette_png,
    "alpha.png": rgba_png,
    "deep.png": png_16bit,
    "grey.png": lambda: encode(solid(77, mode="L"), "PNG"),
    "print.jpg": cmyk_jpeg,
    "photo.webp": lambda: encode(solid(BLUE), "WEBP"),
    "phone.jpg": exif_rotated_jpeg,
    "dot.png": lambda: encode(solid(RED, size=(1, 1)), "PNG"),
    "strip.png": lambda: encode(solid(BLUE, size=(5000, 2)), "PNG"),
}
