"""The two per-rerun clean-ups of Streamlit that the Lab turns off, checked against the installed Streamlit:
if a new version renames either, the setting or the patch would silently stop working."""
from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_garbage_collection_after_every_rerun_is_off_and_still_named_so():
    from streamlit import config
    from streamlit.runtime.scriptrunner import script_runner

    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["runner"]["postScriptGC"] is False
    assert "runner.postScriptGC" in config._config_options_template  # the option Streamlit reads
    source = inspect.getsource(script_runner.ScriptRunner)
    assert 'config.get_option("runner.postScriptGC")' in source and "gc.collect(2)" in source


def test_the_keras_clean_up_the_lab_replaces_is_the_one_streamlit_calls():
    from streamlit.runtime.scriptrunner import script_runner

    from app_pages.parts.common import skip_keras_clear_session

    assert callable(script_runner._clean_problem_modules)
    assert "_log_if_error(_clean_problem_modules)" in inspect.getsource(script_runner.ScriptRunner)
    original = script_runner._clean_problem_modules
    try:
        skip_keras_clear_session()
        assert script_runner._clean_problem_modules is not original
        assert script_runner._clean_problem_modules() is None
    finally:
        script_runner._clean_problem_modules = original


def test_after_the_patch_a_script_run_no_longer_calls_streamlits_keras_clean_up(monkeypatch):
    """The patch takes effect where it matters: Streamlit looks the hook up by its module name after every
    script run, so a run calls whatever that name holds; once the Lab patched it, the original never runs."""
    from streamlit.runtime.scriptrunner import script_runner
    from streamlit.testing.v1 import AppTest

    from app_pages.parts.common import skip_keras_clear_session

    assert hasattr(script_runner, "_clean_problem_modules"), "Streamlit renamed its per-run clean-up hook"
    calls = []
    monkeypatch.setattr(script_runner, "_clean_problem_modules", lambda: calls.append("clean-up"))
    AppTest.from_string("import streamlit as st\nst.write('one run')").run()
    assert calls == ["clean-up"]  # the name the Lab patches is the one a run calls

    skip_keras_clear_session()
    AppTest.from_string("import streamlit as st\nst.write('another run')").run()
    assert calls == ["clean-up"]  # patched: the clean-up did not run again
