"""Random bytes through every decoding path: only the project's own error type may come out."""
from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.data.images import decode_image, image_size
from core.settings.errors import ImageError


def _seed_images() -> list[bytes]:
    out = []
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


def _check(data: bytes) -> None:
    try:
        arr = decode_image(data, "fuzz.bin", min_side=16)
    except ImageError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.bin:")
        return
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert image_size(data, "fuzz.bin")[0] >= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_only_raise_image_error(data):
    _check(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SEEDS))), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                     min_size=1, max_size=12), st.integers(8, 10_000))
def test_mutated_real_images_only_raise_image_error(which, flips, cut):
    """Valid files with corrupted bytes and truncations: the realistic bad uploads."""
    data = bytearray(SEEDS[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    _check(bytes(data[: max(1, cut % (len(data) + 1))]))
