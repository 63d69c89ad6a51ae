"""Every image in BAD_INPUTS.md's images section, through decode_image and predict_bytes.

Bad files must fail with a one-line ImageError that names the file; legitimate but unusual files must
decode to an upright HxWx3 uint8 array with the colours a viewer would show.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from sample_images import (
    BAD,
    BLUE,
    GOOD,
    RED,
    WHITE,
    animated_gif,
    assert_rgb,
    close,
    cmyk_jpeg,
    corrupt_entropy_jpeg,
    encode,
    exif_rotated_jpeg,
    large_photo,
    palette_png,
    png_16bit,
    png_bomb,
    rgba_png,
    solid,
)

from core.data.images import decode_image, file_image_size, image_size, is_image_name
from core.settings.errors import ImageError


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


@pytest.mark.parametrize("mode,size", [("RGB", (300, 200)), ("L", (300, 200)), ("RGB", (1500, 1000))])
def test_pixels_are_exactly_pillows(mode, size):
    """The fast ways of reading pixels (one strip read whole, several strips) give Pillow's own array."""
    rng = np.random.default_rng(3)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    data = encode(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode), "JPEG")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    arr = decode_image(data, "noise.jpg")
    assert arr.shape == (size[1], size[0], 3)
    np.testing.assert_array_equal(arr, expected)


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




def test_predict_bytes_survives_every_bad_input(trained_runs):
    """One batch with every case: bad files become one-line errors, every good file gets probabilities."""
    from core.runs.predict import Prediction, PredictionError, load_for_prediction, predict_bytes

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
