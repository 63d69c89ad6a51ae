"""Hostile images cost bounded memory: peak RSS of a child process decoding them, against stated bounds.

Each case runs in a fresh interpreter (ru_maxrss is a high-water mark for a whole process) that imports
the decoder first and reports how far its peak rose while decoding.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.data.images import DECODE_BUDGET_BYTES, MAX_DECODE_BYTES, decode_cost

ROOT = Path(__file__).resolve().parents[3]
MB = 10**6
REFUSED_BOUND = 20 * MB  # refusing from the header decodes nothing

CHILD = textwrap.dedent("""
    import json, resource, sys, threading
    sys.path[:0] = [{root!r}, {tests!r}]
    import sample_images
    from core.data.images import decode_image
    from core.settings.errors import ImageError

    data = eval({make!r}, vars(sample_images))
    outcomes = []

    def decode():
        try:
            outcomes.append(list(decode_image(data, {name!r}).shape))
        except ImageError as exc:
            outcomes.append(str(exc))

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    threads = [threading.Thread(target=decode) for _ in range({copies})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(json.dumps({{"rise": rise, "outcomes": outcomes}}))
""")


def peak_rise(make: str, name: str, copies: int = 1) -> tuple[int, list]:
    """(bytes the child's peak RSS rose while decoding, each decode's shape or error message)."""
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), make=make, name=name, copies=copies)
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["rise"], report["outcomes"]


def test_an_ico_named_png_is_refused_before_pillow_decodes_it():
    rise, outcomes = peak_rise("ico_bomb(20000)", "icon.png")
    assert len(outcomes) == 1 and "not a readable image" in outcomes[0] and "icon.png" in outcomes[0]
    assert rise < REFUSED_BOUND  # was 1.5 GB: Pillow's ICO reader decodes the 20000x20000 picture on open


def test_a_16_bit_8000_pixel_png_decodes_within_its_stated_cost():
    bound = decode_cost((8000, 8000), "I;16")
    assert bound <= MAX_DECODE_BYTES
    rise, outcomes = peak_rise("png_16bit_bomb(8000)", "deep.png")
    assert outcomes == [[8000, 8000, 3]]
    assert rise < bound  # was 1.6 GB


def test_four_at_once_stay_within_the_process_decode_budget():
    rise, outcomes = peak_rise("png_16bit_bomb(8000)", "deep.png", copies=4)
    assert outcomes == [[8000, 8000, 3]] * 4
    assert rise < DECODE_BUDGET_BYTES  # was 3 GB


@pytest.mark.parametrize("make, name", [("png_16bit_bomb(8000, colour_type=6, depth=8)", "rgba.png"),
                                        ("png_bomb(30000)", "bomb.png")])
def test_images_over_the_memory_or_pixel_limit_are_refused_from_the_header(make, name):
    rise, outcomes = peak_rise(make, name)
    assert len(outcomes) == 1 and outcomes[0].startswith(f"{name}: ")
    assert "memory" in outcomes[0] or "megapixel" in outcomes[0]
    assert rise < REFUSED_BOUND
