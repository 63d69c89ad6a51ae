"""A session's saved choices: only plain values within bounds come back, and only for a real token."""
from __future__ import annotations

import json
import os
from pathlib import Path

from core.settings.choices import MAX_BYTES, is_token, load_choices, new_token, save_choices


def _file(token: str) -> Path:
    return Path(os.environ["LAB_CACHE_DIR"]) / "sessions" / f"{token}.json"


def test_plain_choices_come_back_and_objects_are_left_out():
    token = new_token()
    save_choices(token, {"lab_source": "folder:/data", "exp_b_epochs": 15, "exp_t_lr": 0.001, "exp_t_cache": True,
                         "exp_shown": ["run-a", "run-b"], "exp_job": object(), "nan": float("nan"),
                         "huge": 1e300, "notice": ("info", "x"), 7: "number key"})
    assert load_choices(token) == {"lab_source": "folder:/data", "exp_b_epochs": 15, "exp_t_lr": 0.001,
                                   "exp_t_cache": True, "exp_shown": ["run-a", "run-b"]}


def test_addresses_that_are_not_tokens_load_nothing_and_name_no_file():
    for hostile in ("../../etc/passwd", "", "A" * 32, "0" * 31, None, ["x"]):
        assert not is_token(hostile)
        assert load_choices(hostile) == {}


def test_doctored_files_load_nothing_or_only_what_is_plain():
    token = new_token()
    path = _file(token)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[1, 2, 3]")
    assert load_choices(token) == {}
    nested: dict = {"k": 1}
    for _ in range(100):
        nested = {"k": nested}
    path.write_text(json.dumps(nested))
    assert load_choices(token) == {}  # nested objects are not plain values
    path.write_text(json.dumps({"lab_source": "x" * (MAX_BYTES + 1)}))
    assert load_choices(token) == {}  # larger than anything the Lab writes
    path.write_text(json.dumps({"ok": 1, "deep": {"a": 1}, "long": ["x"] * 1000}))
    assert load_choices(token) == {"ok": 1}
