"""The hub handle a hosted page accepts: downloads and the Lab's own folders, and never an answer that tells
which of the server's other folders exist."""
from __future__ import annotations

import pytest

from core.models.hub import KAGGLE_PREFIX, check_web_handle
from core.settings.errors import ModelFileError

REFUSED = "This server only uses TF Hub / Kaggle URLs or folders inside its cache or runs folder as the hub handle."


def refusal(handle: str) -> str:
    with pytest.raises(ModelFileError) as refused:
        check_web_handle(handle)
    return str(refused.value)


def test_a_server_folder_gets_the_same_answer_whether_it_exists_or_not(tmp_path, monkeypatch):
    module = tmp_path / "srv" / "model"
    module.mkdir(parents=True)
    (module / "saved_model.pb").write_bytes(b"x")
    (tmp_path / "plain").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    answers = {handle: refusal(handle) for handle in (
        str(module), str(tmp_path / "srv" / "missing"), str(tmp_path / "plain"), str(tmp_path / "nothing"),
        "/etc", "/no/such/folder", "~/plain", "~/nothing", f"{tmp_path}/plain/../srv/model")}
    assert set(answers.values()) == {REFUSED}
    assert not any(str(tmp_path) in answer for answer in answers.values())


def test_a_kaggle_shaped_handle_is_kaggles_even_where_such_a_folder_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "google" / "mobilenet-v2" / "tensorFlow2" / "feature-vector").mkdir(parents=True)
    for handle in ("google/mobilenet-v2/tensorFlow2/feature-vector", "keras/other/tensorFlow2/variant"):
        assert check_web_handle(handle) == KAGGLE_PREFIX + handle


def test_the_labs_own_folders_and_hub_urls_are_accepted(tmp_path):
    from core.settings.paths import cache_dir

    module = cache_dir() / "hub-handle-test" / "backbone"
    module.mkdir(parents=True, exist_ok=True)
    (module / "saved_model.pb").write_bytes(b"x")
    assert check_web_handle(f" {module} ") == str(module.resolve())
    url = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
    assert check_web_handle(url) == url
    # Inside the Lab's own folders a missing one may be said to be missing.
    assert "neither a URL nor an existing folder" in refusal(str(cache_dir() / "hub-handle-test" / "missing"))
    assert refusal(f"{cache_dir()}/../escape").startswith("This server only uses TF Hub")
    assert refusal("https://example.com/module").startswith("This server only uses TF Hub")
    assert "empty" in refusal("  ")
