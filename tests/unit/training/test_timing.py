"""Models are timed in a child process, so a server waiting for an estimate holds nothing its visitors need."""
from __future__ import annotations

import sys
import threading
import time

import pytest

from core.settings.config import MOBILENET_V2_HANDLE, ModelKind
from core.settings.errors import DataError, LabError, OfflineError
from core.training import timing
from core.training.estimate import Speed


def test_a_setting_is_timed_in_one_child_and_the_server_never_imports_tensorflow(demo_backbone, demo_folder,
                                                                                    tmp_path):
    before = "tensorflow" in sys.modules
    speed = timing.measure_setting(ModelKind.TRANSFER, 64, 8, str(demo_backbone), 3,
                                   source=f"folder:{demo_folder}", lock_folder=tmp_path)
    assert isinstance(speed, Speed)
    assert speed.train > 0 and speed.evaluate > 0 and speed.setup > 0
    assert speed.features > 0 and speed.head_train > 0  # the cached-features path is timed too
    assert 0 < speed.decode < 5  # the source's own images, read and resized
    assert speed.fine_tune == 0  # the slowest step is timed only when asked for
    assert ("tensorflow" in sys.modules) == before  # measured elsewhere, not imported here


def test_the_labs_own_errors_come_back_as_themselves(demo_backbone, tmp_path):
    # Offline, the article's hub module cannot be fetched: the page must tell "unreachable" from a failure.
    with pytest.raises(OfflineError):
        timing.measure_setting(ModelKind.TRANSFER, 64, 8, MOBILENET_V2_HANDLE, 2, lock_folder=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        timing.measure_setting(ModelKind.BASELINE, 64, 4, str(demo_backbone), 2, source=f"folder:{tmp_path / 'gone'}",
                               lock_folder=tmp_path)


def test_an_unreachable_hub_module_is_told_without_starting_a_process(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(timing.subprocess, "run", lambda *a, **k: started.append(a))
    with pytest.raises(OfflineError, match="hub module"):
        timing.measure_setting(ModelKind.TRANSFER, 64, 8, MOBILENET_V2_HANDLE, 2, lock_folder=tmp_path)
    assert started == []


def test_anything_else_is_one_line_and_never_a_traceback(tmp_path):
    with pytest.raises(LabError) as caught:
        timing.measure_apart("no such measurement", tmp_path)
    assert "Timing failed (ValueError)" in str(caught.value) and "Traceback" not in str(caught.value)


def test_one_measurement_at_a_time_per_lock_folder(tmp_path, monkeypatch):
    spans = []
    real_run = timing.subprocess.run

    def recorded(*args, **kwargs):
        began = time.monotonic()
        try:
            return real_run(*args, **kwargs)
        finally:
            spans.append((began, time.monotonic()))

    monkeypatch.setattr(timing.subprocess, "run", recorded)
    # The cheapest child there is: a request it refuses at once, after importing what every timing imports.
    threads = [threading.Thread(target=lambda: pytest.raises(LabError, timing.measure_apart, "nothing", tmp_path))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start  # the second child started only after the first had ended
