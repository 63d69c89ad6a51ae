"""A hosted Lab (the cloud preset) through its pages: no server path on any page, session keys issued by the
server only, caps on Data efficiency, and one visitor's imported run is nobody else's default."""
from __future__ import annotations

import io
import shutil
import zipfile

import pytest
from lab_helpers import run_picker

TEXT_ELEMENTS = ("title", "header", "subheader", "markdown", "caption", "text", "code", "error", "warning", "info",
                 "success", "exception", "toast")


def page_text(at) -> str:
    """Everything a visitor can read on the page: text elements, metrics, status and expander labels,
    progress bars."""
    parts = [str(e.value) for kind in TEXT_ELEMENTS for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [e.proto.label for e in at.expander] + [s.proto.label for s in at.status]
    parts += [p.proto.text for p in at.get("progress")]
    return "\n".join(parts)


@pytest.fixture
def cloud(monkeypatch):
    monkeypatch.setenv("LAB_PRESET", "cloud")


def server_folders(tmp_path) -> list[str]:
    from core.settings.paths import cache_dir, runs_dir

    return [str(folder) for folder in (tmp_path, cache_dir(), cache_dir().resolve(), runs_dir())]


def assert_no_server_path(at, tmp_path) -> None:
    text = page_text(at)
    for folder in server_folders(tmp_path):
        assert folder not in text, text


# -- session keys ----------------------------------------------------------------------------------------------

def test_a_key_planted_in_a_link_is_replaced_and_a_key_this_server_issued_restores_its_session(open_page):
    planted = "0123456789abcdef" * 2
    at = open_page("home", query={"s": planted}, state={"lab_source": "tfds:beans"})
    assert not at.exception
    issued = at.session_state["lab_token"]
    assert issued != planted and at.query_params["s"] == issued  # the address bar shows the server's key

    reloaded = open_page("home", query={"s": issued})
    assert reloaded.session_state["lab_token"] == issued and reloaded.query_params["s"] == issued
    assert reloaded.session_state["lab_source"] == "tfds:beans"  # its choices came back with it

    stranger = open_page("home", query={"s": planted})  # the planted key still names no session here
    assert stranger.session_state["lab_token"] not in (planted, issued)


def test_a_fresh_visitor_who_changed_nothing_keeps_the_key_on_a_reload(open_page):
    first = open_page("home")
    issued = first.session_state["lab_token"]
    assert open_page("home", query={"s": issued}).session_state["lab_token"] == issued


# -- no server paths -------------------------------------------------------------------------------------------

def test_home_page_names_no_server_folder_on_the_cloud(open_page, cloud, tmp_path):
    at = open_page("home")
    assert not at.exception
    assert "Runs folder" in page_text(at)
    assert_no_server_path(at, tmp_path)


def test_an_unpacked_upload_and_an_offline_download_name_no_server_folder(open_page, cloud, tmp_path):
    from core.data.demo import make_demo_folder

    folder = make_demo_folder(tmp_path / "zipme", per_class=10, size=(40, 40))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"pets/{path.relative_to(folder)}")
    at = open_page("dataset")
    at.radio[0].set_value("zip").run()
    at.file_uploader[0].set_value(("pets.zip", buffer.getvalue(), "application/zip")).run()
    assert not at.exception and not at.error
    assert "Unpacked: 20 images." in [c.value for c in at.caption]
    at.button[0].click().run()  # Load dataset
    assert not at.exception and not at.error
    assert "Experiments will train on folder `pets`." in [s.value for s in at.success]
    assert_no_server_path(at, tmp_path)

    offline = open_page("dataset")
    offline.radio[0].set_value("article").run()
    offline.button[0].click().run()  # cats_vs_dogs is neither cached nor downloadable here
    [message] = [e.value for e in offline.error]
    assert "network is unreachable" in message and "stays in the cache folder and works offline" in message
    assert_no_server_path(offline, tmp_path)


def show_disk_full_error() -> None:
    """An AppTest script: a full disk while saving a run, as core reports it."""
    from app_pages.parts.common import show_error
    from core.runs.folders import disk_error
    from core.settings.paths import runs_dir

    show_error(disk_error(OSError(28, "No space left on device"), "save the run", runs_dir() / "20300101-000000-x"))


def test_error_lines_name_the_labs_folders_by_name_and_others_not_at_all(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from core.settings.paths import runs_dir

    local = AppTest.from_function(show_disk_full_error).run()
    assert str(runs_dir()) in local.error[0].value  # on one's own machine the folder is worth knowing
    monkeypatch.setenv("LAB_PRESET", "cloud")
    hosted = AppTest.from_function(show_disk_full_error).run()
    assert hosted.error[0].value.startswith("Could not save the run in the runs folder (No space left on device); ")
    assert_no_server_path(hosted, tmp_path)


def test_public_text_replaces_every_server_path_but_leaves_urls_and_relative_names(cloud, tmp_path):
    from streamlit.testing.v1 import AppTest

    def script():
        import streamlit as st

        from app_pages.parts.common import public_text
        from core.settings.paths import cache_dir

        for text in (f"Unpacked into {cache_dir() / 'uploads' / 'zip-1' / 'pets'}.",
                     "Opening folder:/srv/data/pets ...", "'/etc/passwd' and ~/secret are not SavedModel folders",
                     "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4 and train/ and 3/4",
                     "TF Hub / Kaggle URLs, or / alone"):
            st.text(public_text(text))

    at = AppTest.from_function(script).run()
    assert [t.value for t in at.text] == [
        "Unpacked into the cache folder.", "Opening folder:pets ...",
        "'a server folder' and a server folder are not SavedModel folders",
        "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4 and train/ and 3/4",
        "TF Hub / Kaggle URLs, or / alone"]


# -- Data efficiency ----------------------------------------------------------------------------------------------

def test_data_efficiency_on_the_cloud_keeps_to_its_caps_and_names_no_server_folder(open_page, cloud, tmp_path,
                                                                                   demo_folder, demo_backbone):
    from core.settings.paths import cache_dir, uploads_dir

    uploaded = uploads_dir() / "zip-hosted-efficiency" / "shapes"
    backbone = cache_dir() / "hosted-efficiency" / "backbone"
    for src, dst in ((demo_folder, uploaded), (demo_backbone, backbone)):
        if not dst.exists():
            shutil.copytree(src, dst)
    at = open_page("data_efficiency", state={"lab_source": f"folder:{uploaded}", "lab_handle": str(backbone)})
    assert not at.exception and not at.error
    assert "`backbone` (a SavedModel folder on the server)" in at.info[0].value
    assert_no_server_path(at, tmp_path)
    size, epochs = at.number_input
    assert (size.proto.max, epochs.proto.max) == (128, 20)
    at.text_input[0].set_value("5, 600").run()  # 600 per class of 2 classes is over the preset's 1,000 images
    at.button[0].click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [(
        "The cloud preset measures data efficiency on at most 1,000 training images (asked for 600 per class of 2 "
        "classes: 1,200); use smaller counts.")]
    assert_no_server_path(at, tmp_path)


# -- imported runs ---------------------------------------------------------------------------------------------

def test_an_imported_run_is_its_importers_default_and_only_a_deliberate_pick_for_others(open_page, trained_runs,
                                                                                       tmp_path):
    from core.runs.archives import export_run_zip

    runs = tmp_path / "runs"
    trained_here = trained_runs["baseline"].name  # trained on this server: every visitor's default, as before
    shutil.copytree(trained_runs["baseline"], runs / trained_here)
    importer = open_page("experiments", runs_dir=runs)
    [uploader] = [u for u in importer.file_uploader if u.key == "run_import_zip"]
    uploader.set_value(("run.zip", export_run_zip(trained_runs["mobilenet_v2"]), "application/zip")).run()
    importer.button(key="run_import").click().run()
    assert not importer.exception
    imported = trained_runs["mobilenet_v2"].name
    assert imported in run_picker(importer).value
    importer.switch_page("app_pages/predict.py").run()
    assert importer.selectbox(key="pred_run").value == imported  # the importer's own: its default pick

    other = open_page("experiments", runs_dir=runs)
    assert run_picker(other).value == [trained_here]
    assert len(run_picker(other).options) == 2  # the imported run is still there to choose
    other.switch_page("app_pages/predict.py").run()
    assert not other.exception
    assert other.selectbox(key="pred_run").value == trained_here

    shutil.rmtree(runs / trained_here)  # only someone else's import is left: nothing is picked for a newcomer
    newcomer = open_page("predict", runs_dir=runs)
    assert not newcomer.exception and not newcomer.error
    assert newcomer.selectbox(key="pred_run").value is None
    assert "Choose a saved run" in newcomer.info[0].value
    newcomer.selectbox(key="pred_run").set_value(imported).run()
    assert not newcomer.exception and not newcomer.error
    assert newcomer.selectbox(key="pred_run").value == imported
