"""Every image in BAD_INPUTS.md's images section, through decode_image and predict_bytes.

Bad files must fail with a one-line ImageError that names the file; legitimate but unusual files must
decode to an upright HxWx3 uint8 array with the colours a viewer would show.
"""
from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image

from core.errors import ImageError
from core.images import decode_image, file_image_size, image_size, is_image_name

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


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_image_raises_one_line_image_error(name):
    make, expected = BAD[name]
    with pytest.raises(ImageError) as err:
        decode_image(make(), name)
    message = str(err.value)
    assert message.startswith(f"{name}: ")
    assert expected in message
    assert "\n" not in message


def test_bomb_is_refused_from_the_header_alone():
    data = png_bomb()
    assert len(data) < 200_000  # the point of a bomb: tiny on disk, 900 megapixels decoded
    with pytest.raises(ImageError, match="30000x30000"):
        image_size(data, "bomb.png")


@pytest.mark.parametrize("seed", range(4))
def test_corrupt_entropy_jpeg_fails_cleanly_or_decodes_at_its_size(seed):
    # libjpeg treats some scan corruption as fatal and some as a warning (garbled pixels); both are fine,
    # any other exception type is not.
    try:
        arr = decode_image(corrupt_entropy_jpeg(seed), "corrupt.jpg")
    except ImageError as exc:
        assert str(exc).startswith("corrupt.jpg: ") and "\n" not in str(exc)
    else:
        assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8


def assert_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)


def close(pixel, colour, tol=40) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)) <= tol))


def test_large_photo_decodes_in_full():
    arr = decode_image(large_photo(), "big.jpg")
    assert_rgb(arr, (6000, 8000))
    assert arr[3000, 1000, 0] > 180 and arr[3000, 1000, 2] < 80  # red half
    assert arr[3000, 7000, 2] > 180 and arr[3000, 7000, 0] < 80  # blue half


def test_large_photo_decodes_reduced_when_only_a_small_input_is_needed():
    arr = decode_image(large_photo(), "big.jpg", min_side=224)
    assert arr.dtype == np.uint8 and arr.shape[2] == 3
    assert 224 <= min(arr.shape[:2]) < 6000
    assert arr.shape[1] / arr.shape[0] == pytest.approx(8000 / 6000, rel=0.01)
    assert arr[arr.shape[0] // 2, arr.shape[1] // 8, 0] > 180  # still red on the left


def test_animated_gif_uses_the_first_frame():
    arr = decode_image(animated_gif(), "anim.gif")
    assert_rgb(arr, (32, 32))
    assert close(arr[16, 16], RED)


def test_palette_png_keeps_its_colours():
    arr = decode_image(palette_png(), "palette.png")
    assert_rgb(arr, (16, 16))
    assert close(arr[8, 2], RED, tol=0) and close(arr[8, 12], BLUE, tol=0)


def test_rgba_png_is_composited_on_white():
    arr = decode_image(rgba_png(), "alpha.png")
    assert_rgb(arr, (16, 16))
    assert close(arr[8, 2], RED, tol=0)
    assert close(arr[8, 12], WHITE, tol=0)  # transparent black shows as the white a viewer draws


def test_16bit_png_is_scaled_not_clipped():
    arr = decode_image(png_16bit(), "deep.png")
    assert_rgb(arr, (8, 64))
    row = arr[0, :, 0].astype(int)
    assert row[0] <= 1 and row[-1] >= 254
    assert np.all(np.diff(row) >= 0) and 100 < row[32] < 160  # a ramp, not a wall of white


def test_grayscale_becomes_three_equal_channels():
    arr = decode_image(encode(solid(77, mode="L"), "PNG"), "grey.png")
    assert_rgb(arr, (32, 32))
    assert np.all(arr == 77)


def test_cmyk_jpeg_is_converted_to_rgb():
    arr = decode_image(cmyk_jpeg(), "print.jpg")
    assert_rgb(arr, (32, 32))
    assert close(arr[16, 16], RED, tol=60)


def test_webp_decodes():
    arr = decode_image(encode(solid(BLUE), "WEBP", lossless=True), "photo.webp")
    assert_rgb(arr, (32, 32))
    assert close(arr[16, 16], BLUE, tol=0)


def test_exif_orientation_6_is_decoded_upright():
    arr = decode_image(exif_rotated_jpeg(), "phone.jpg")
    assert_rgb(arr, (40, 20))  # displayed 20 wide, 40 high
    assert close(arr[5, 10], RED) and close(arr[34, 10], BLUE)  # red on top, as a viewer shows it


def test_one_pixel_image():
    arr = decode_image(encode(solid(RED, size=(1, 1)), "PNG"), "dot.png", min_side=64)
    assert_rgb(arr, (1, 1))
    assert close(arr[0, 0], RED, tol=0)


def test_very_wide_strip():
    arr = decode_image(encode(solid(BLUE, size=(5000, 2)), "PNG"), "strip.png")
    assert_rgb(arr, (2, 5000))


def test_file_image_size_reads_the_header_of_files(tmp_path):
    good = tmp_path / "a.PNG"
    good.write_bytes(encode(solid(RED, size=(30, 20)), "PNG"))
    assert file_image_size(good) == (30, 20)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    with pytest.raises(ImageError, match="megapixel"):
        file_image_size(bomb)


@pytest.mark.parametrize("name,ok", [("a.jpg", True), ("b.JPEG", True), ("c.Png", True), ("d.bmp", True),
                                     ("e.GIF", True), ("f.webp", True), ("notes.txt", False),
                                     ("photo.jpg.zip", False), ("noext", False)])
def test_image_extensions_in_any_case(name, ok):
    assert is_image_name(name) is ok


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


def test_predict_bytes_survives_every_bad_input(trained_runs):
    """One batch with every case: bad files become one-line errors, every good file gets probabilities."""
    from core.predict import Prediction, PredictionError, load_for_prediction, predict_bytes

    loaded = load_for_prediction(trained_runs["baseline"])
    files = [(name, make()) for name, (make, _) in sorted(BAD.items())]
    files += [(name, make()) for name, make in sorted(GOOD.items())]
    results = predict_bytes(loaded, files)
    assert [r.name for r in results] == [name for name, _ in files]
    for result in results:
        if result.name in BAD:
            assert isinstance(result, PredictionError), result.name
            assert result.message.startswith(result.name) and "\n" not in result.message
        else:
            assert isinstance(result, Prediction), (result.name, getattr(result, "message", ""))
            assert list(result.probabilities) == loaded.class_names
            assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
            assert result.label in loaded.class_names
