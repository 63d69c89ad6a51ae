"""The Dataset page: offline TFDS, a generated folder, an uploaded zip, broken inputs."""
from __future__ import annotations

import io
import zipfile

from PIL import Image


def choose_folder(at, path) -> None:
    at.radio[0].set_value("folder").run()
    at.text_input[0].set_value(str(path)).run()
    at.button[0].click().run()


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_offline_tfds_says_what_to_do_instead(open_page):
    at = open_page("dataset")
    assert not at.exception
    assert at.radio[0].value == "article"
    at.button[0].click().run()  # Load dataset: cats_vs_dogs is neither cached nor downloadable here
    assert not at.exception
    message = at.error[0].value
    assert "network is unreachable" in message
    assert "folder" in message and "SavedModel" in message
    assert "lab_source" not in at.session_state  # nothing that failed to open becomes the training source


def test_folder_shows_counts_charts_and_sixteen_labelled_samples(open_page, demo_folder):
    at = open_page("dataset")
    choose_folder(at, demo_folder)
    assert not at.exception
    assert not at.error
    assert metric(at, "Classes") == "2"
    assert metric(at, "Training images") == "96"
    assert metric(at, "Validation images") == "24"
    assert metric(at, "Files skipped") == "0"
    assert len(at.get("plotly_chart")) == 2
    images = at.get("image")
    assert len(images) >= 16
    captions = {img.proto.imgs[0].caption for img in images}
    assert captions == {"circles", "squares"}
    assert at.session_state["lab_source"] == f"folder:{demo_folder}"


def test_shuffle_draws_other_samples(open_page, demo_folder):
    at = open_page("dataset")
    choose_folder(at, demo_folder)
    before = [img.proto.imgs[0].url for img in at.get("image")]
    next(b for b in at.button if b.label == "Shuffle").click().run()
    after = [img.proto.imgs[0].url for img in at.get("image")]
    assert len(after) == len(before) >= 16
    assert before != after


def test_unreadable_and_non_image_files_are_counted(open_page, tmp_path):
    from core.data.demo import make_demo_folder

    root = make_demo_folder(tmp_path / "mixed", per_class=12, size=(48, 48))
    (root / "circles" / "notes.txt").write_text("not an image")
    (root / "squares" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    at = open_page("dataset")
    choose_folder(at, root)
    assert not at.exception
    assert metric(at, "Files skipped") == "2"
    assert any("skipped files" in e.label for e in at.expander)


def test_missing_folder_is_one_error_line(open_page, tmp_path):
    at = open_page("dataset")
    choose_folder(at, tmp_path / "nowhere")
    assert not at.exception
    assert len(at.error) == 1
    assert "does not exist" in at.error[0].value


def zip_of(folder) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"pets/{path.relative_to(folder)}")
        archive.writestr("pets/README.txt", "two classes")
    return buffer.getvalue()


def test_uploaded_zip_is_unpacked_and_loaded(open_page, tmp_path):
    from core.data.demo import make_demo_folder
    from core.settings.paths import uploads_dir

    folder = make_demo_folder(tmp_path / "zipme", per_class=10, size=(40, 40))
    at = open_page("dataset")
    at.radio[0].set_value("zip").run()
    at.file_uploader[0].set_value(("pets.zip", zip_of(folder), "application/zip")).run()
    assert not at.exception
    assert not at.error
    assert any("20 images" in c.value and "1 other files" in c.value for c in at.caption)
    at.button[0].click().run()
    assert not at.exception
    source = at.session_state["lab_source"]
    assert source.startswith(f"folder:{uploads_dir()}")
    assert source.endswith("/pets")  # the wrapper folder inside the zip is looked through
    assert metric(at, "Classes") == "2"


def test_a_zip_that_is_not_a_zip_is_refused(open_page):
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    at = open_page("dataset")
    at.radio[0].set_value("zip").run()
    at.file_uploader[0].set_value(("photos.zip", png.getvalue(), "application/zip")).run()
    assert not at.exception
    assert "not a zip file" in at.error[0].value
    assert at.button[0].disabled


def test_generated_demo_sets_up_an_offline_dataset_and_hub_handle(open_page, pretrained_demo):
    from core.settings.paths import cache_dir

    at = open_page("experiments", state={"exp_image_size": 64})
    assert at.text_input(key="exp_t_handle").value.startswith("https://tfhub.dev/")
    at.switch_page("app_pages/dataset.py").run()
    at.radio[0].set_value("demo").run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert metric(at, "Classes") == "3"
    assert at.session_state["lab_source"] == pretrained_demo.source == f"folder:{cache_dir() / 'demo' / 'scenes-v1'}"
    at.switch_page("app_pages/experiments.py").run()
    assert not at.exception and not at.error
    assert at.text_input(key="exp_t_handle").value == str(pretrained_demo.backbone) == str(
        cache_dir() / "demo" / "backbone-v1")
    assert len([m for m in at.markdown if m.value.startswith("**Estimated duration")]) == 2
