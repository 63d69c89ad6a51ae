"""Models are timed in a child process, so a server waiting for an estimate holds nothing its visitors need."""
from __future__ import annotations

import sys
import threading
import time

import pytest

from core.settings.config import MOBILENET_V2_HANDLE, ModelKind
from core.settings.errors import LabError, OfflineError
from core.training import timing
from core.training.estimate import Speed


def test_a_transfer_model_is_timed_in_a_child_process_and_the_server_holds_no_tensorflow(demo_backbone, tmp_path):
    before = "tensorflow" in sys.modules
    speed = timing.speed(ModelKind.MOBILENET_V2, 64, 8, str(demo_backbone), 3, lock_folder=tmp_path)
    assert isinstance(speed, Speed)
    assert speed.train > 0 and speed.evaluate > 0 and speed.setup > 0
    assert speed.features > 0 and speed.head_train > 0  # the cached-features path is timed too
    assert ("tensorflow" in sys.modules) == before  # measured elsewhere, not imported here


def test_decoding_is_timed_on_the_source_named(demo_folder, tmp_path):
    assert 0 < timing.decode(f"folder:{demo_folder}", 64, 8, lock_folder=tmp_path) < 5


def test_the_labs_own_errors_come_back_as_themselves(tmp_path):
    # Offline, the article's hub module cannot be fetched: the page must tell "unreachable" from a failure.
    with pytest.raises(OfflineError):
        timing.speed(ModelKind.MOBILENET_V2, 64, 8, MOBILENET_V2_HANDLE, 2, lock_folder=tmp_path)
    with pytest.raises(LabError, match="should look like"):
        timing.decode("nonsense", 64, 8, lock_folder=tmp_path)


def test_anything_else_is_one_line_and_never_a_traceback(tmp_path):
    with pytest.raises(LabError) as caught:
        timing.measure_apart("no such measurement", tmp_path)
    assert "Timing failed (ValueError)" in str(caught.value) and "Traceback" not in str(caught.value)


def test_one_measurement_at_a_time_per_lock_folder(demo_folder, tmp_path, monkeypatch):
    spans = []
    real_run = timing.subprocess.run

    def recorded(*args, **kwargs):
        began = time.monotonic()
        try:
            return real_run(*args, **kwargs)
        finally:
            spans.append((began, time.monotonic()))

    monkeypatch.setattr(timing.subprocess, "run", recorded)
    threads = [threading.Thread(target=timing.decode, args=(f"folder:{demo_folder}", 64, 8, tmp_path))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert a_end <= b_start  # the second child started only after the first had ended
