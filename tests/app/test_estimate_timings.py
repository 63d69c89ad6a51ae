"""The pages' estimate timings: a failed one is shown for a while before it is tried again."""
from __future__ import annotations

import time


def test_a_failed_timing_is_tried_again_only_a_while_after_it_failed(monkeypatch, tmp_path):
    from app_pages.parts import estimates
    from core.training import timing

    calls = []

    def failing(*_args):
        calls.append(time.monotonic())
        time.sleep(0.6)  # longer than the retry delay: it waited in line, or TensorFlow took long to import
        raise OSError("network unreachable")

    monkeypatch.setattr(timing, "measure_setting", failing)
    monkeypatch.setattr(estimates, "RETRY_FAILED_SECONDS", 0.4)
    monkeypatch.setattr(estimates, "runs_folder", lambda: tmp_path)
    timings = estimates._Timings()
    key = ("baseline", 64, 16, "handle", 2, "folder:x", False)
    first = timings.future(key)
    assert isinstance(first.exception(timeout=5), OSError)
    assert timings.future(key) is first and len(calls) == 1  # just failed: shown, not run again at once
    time.sleep(0.5)
    again = timings.future(key)
    assert again is not first
    again.exception(timeout=5)
    assert len(calls) == 2
    timings.future(("mobilenet_v2", 64, 16, "handle", 2, "folder:x", False))
    timings.cancel_pending()  # the one still running is forgotten; the finished failure stays
    assert list(timings._futures) == [key]
