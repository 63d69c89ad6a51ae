"""Importing TFDS in one thread must leave every other thread's imports intact (a server's sessions)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import sys, threading, time
from etils.epy import lazy_imports_utils

# Each import TFDS defers takes 10 ms here, so its deferred-import blocks last long enough for the other
# thread to run inside them, as a busy server's threads do by chance.
_deferred = lazy_imports_utils._lazy_import
def _slow_deferred(*args, **kwargs):
    time.sleep(0.01)
    return _deferred(*args, **kwargs)
lazy_imports_utils._lazy_import = _slow_deferred

failures, imports, done = [], [0], threading.Event()

def session():
    while not done.is_set():
        from json import dumps  # any import a page makes while another page opens a TFDS dataset
        if not callable(dumps):
            failures.append(type(dumps).__name__)
        imports[0] += 1

thread = threading.Thread(target=session)
thread.start()
time.sleep(0.2)
{importer}
done.set()
thread.join()
print(imports[0], len(failures), sorted(set(failures)))
"""


def run_child(importer: str) -> tuple[int, int, str]:
    code = textwrap.dedent(CHILD).replace("{importer}", importer)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imports, failures, kinds = proc.stdout.strip().splitlines()[-1].split(" ", 2)
    return int(imports), int(failures), kinds


def test_other_threads_keep_real_modules_while_tfds_imports():
    imports, failures, kinds = run_child("from core.data.tfds_import import tfds\ntfds().builder")
    assert imports > 100  # the other thread really imported all along
    assert failures == 0, kinds


def test_a_bare_tfds_import_is_what_breaks_them():
    """The hazard the wrapper removes, shown: etils swaps the import of the whole process meanwhile."""
    _, failures, kinds = run_child("import tensorflow_datasets")
    assert failures > 0 and "LazyModule" in kinds
