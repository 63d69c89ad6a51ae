"""Importing tensorflow_datasets without breaking the imports of other threads.

TFDS speeds its own import up with etils' `lazy_imports`, which replaces `builtins.__import__` for the
whole process while a block runs. In a server where other threads run at the same time (one per browser
session), any import they make meanwhile returns a placeholder instead of the module, and their page
fails ("'LazyModule' object is not callable"). Here the replacement is made to apply to the importing
thread only: every other thread keeps Python's own import.
"""
from __future__ import annotations

import builtins
import contextlib
import logging
import threading

_local = threading.local()
_lock = threading.Lock()
_python_import = builtins.__import__


def _per_thread_import(*args, **kwargs):
    fake = getattr(_local, "fake_import", None)
    return (fake or _python_import)(*args, **kwargs)


def _install() -> None:
    from etils import epy

    if getattr(epy.lazy_imports, "lab_per_thread", False):
        return
    etils_lazy_imports = epy.lazy_imports

    @contextlib.contextmanager
    def lazy_imports(*args, **kwargs):
        builtins.__import__ = _per_thread_import
        with etils_lazy_imports(*args, **kwargs):
            fake = builtins.__import__  # what etils installed for the whole process
            builtins.__import__ = _per_thread_import
            previous, _local.fake_import = getattr(_local, "fake_import", None), fake
            try:
                yield
            finally:
                _local.fake_import = previous
        builtins.__import__ = _per_thread_import  # etils restored what it found: the per-thread import

    lazy_imports.lab_per_thread = True
    epy.lazy_imports = lazy_imports


class _NotDownloadedYet(logging.Filter):
    """TFDS warns "Variant folder ... has no dataset_info.json" on every `is_prepared()` of a dataset that is not
    downloaded yet, which is an answer, not a problem: the Lab asks it on each page run and about every second
    while a download runs, so the server's log filled with it. A folder with other files missing still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Variant folder %s has no %s" and record.args
                    and record.args[-1] == "dataset_info.json")


_QUIET = _NotDownloadedYet()


def tfds():
    """The tensorflow_datasets module, imported (once) so that concurrent imports stay intact."""
    with _lock:
        _install()
        import tensorflow_datasets

        logging.getLogger("absl").addFilter(_QUIET)  # adding the same filter again changes nothing
    return tensorflow_datasets
