"""The entry script and the home page, offline."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def texts(at) -> str:
    return "\n".join(str(e.value) for e in (*at.markdown, *at.caption, *at.info, *at.metric))


def test_home_renders_offline_with_the_articles_numbers(open_page, tmp_path):
    at = open_page("home")
    assert not at.exception
    assert not at.error
    assert at.title[0].value == "Transfer Learning Lab"
    values = [m.value for m in at.metric]
    assert "≈88%" in values and "≈98%" in values
    assert "9.68 M" in values and "2.26 M" in values
    page_links = [link.proto.page for link in at.get("page_link")]
    assert any(p.endswith("dataset") for p in page_links)
    assert any(p.endswith("experiments") for p in page_links)
    assert any(p.endswith("data-efficiency") for p in page_links)  # every page is a step of "Start here"
    assert any(p.endswith("predict") for p in page_links)
    body = texts(at)
    assert "Offline" in body  # the network check is forced offline in tests
    assert str(tmp_path / "runs") in body  # the runs folder the page reads


def test_sidebar_names_the_chosen_dataset(open_page, demo_folder):
    at = open_page("home", state={"lab_source": f"folder:{demo_folder}"})
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    assert str(demo_folder) in sidebar
    assert "offline" in sidebar


def last_line_of_fresh_interpreter(script: str, tmp_path: Path, timeout: int) -> str:
    """Run script in a new Python (offline, own runs and cache folders) and return its last printed line."""
    offline = "import core.data.network\ncore.data.network.can_reach = lambda *a, **k: False\n"
    env = {"LAB_RUNS_DIR": str(tmp_path / "runs"), "LAB_CACHE_DIR": str(tmp_path / "cache"),
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", offline + script], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_entry_and_home_do_not_import_tensorflow(tmp_path):
    """First paint must not pay TensorFlow's start-up; checked in a fresh interpreter."""
    script = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(ROOT / 'streamlit_app.py')!r}, default_timeout=60).run()\n"
        "assert not at.exception, at.exception\n"
        "assert at.title[0].value == 'Transfer Learning Lab'\n"
        "print('tensorflow' in sys.modules)\n"
    )
    assert last_line_of_fresh_interpreter(script, tmp_path, timeout=120) == "False"


def test_sidebar_shows_the_servers_folders_only_on_the_local_preset(open_page, monkeypatch, tmp_path):
    from core.settings.paths import cache_dir, uploads_dir

    source = f"folder:{uploads_dir() / 'abc123' / 'pets'}"
    local = "\n".join(c.value for c in open_page("home", state={"lab_source": source}).sidebar.caption)
    assert str(tmp_path / "runs") in local and str(cache_dir()) in local and str(uploads_dir()) in local
    monkeypatch.setenv("LAB_PRESET", "cloud")
    hosted = "\n".join(c.value for c in open_page("home", state={"lab_source": source}).sidebar.caption)
    assert "Runs: 0 finished" in hosted and "Dataset: folder `pets`" in hosted
    for folder in (tmp_path, cache_dir(), uploads_dir()):
        assert str(folder) not in hosted


def test_script_runs_leave_keras_and_tensorflow_state_alone(tmp_path):
    """Streamlit calls Keras 3's clear_session after every script run (a full garbage collection and
    TensorFlow's kernel cache, ~0.17 s holding the GIL); the Lab's entry script turns that off, since every
    watching visitor reruns a fragment every 2 s. A plain Streamlit script shows the call it avoids."""
    script = (
        "import keras\n"
        "from streamlit.testing.v1 import AppTest\n"
        "calls = []\n"
        "keras.backend.clear_session = lambda *a, **k: calls.append(1)\n"
        "AppTest.from_string('import streamlit as st\\nst.write(1)', default_timeout=60).run()\n"
        "plain = len(calls)\n"
        f"at = AppTest.from_file({str(ROOT / 'streamlit_app.py')!r}, default_timeout=60).run()\n"
        "assert not at.exception, at.exception\n"
        "calls.clear()\n"
        "at.run(); at.run()\n"
        "AppTest.from_string('import streamlit as st\\nst.write(1)', default_timeout=60).run()\n"
        "print(plain, len(calls))\n"
    )
    assert last_line_of_fresh_interpreter(script, tmp_path, timeout=180) == "1 0"
