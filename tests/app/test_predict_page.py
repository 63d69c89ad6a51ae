"""The Predict page: a reloaded run classifies uploads and camera photos; bad files get one error each."""
from __future__ import annotations

import io
import os
import shutil

import pytest
from PIL import Image

from core.settings.text import markdown_literal


@pytest.fixture(scope="module")
def circle(demo_folder) -> tuple[str, bytes]:
    path = min((demo_folder / "circles").iterdir())
    return path.name, path.read_bytes()


def expected_prediction(run_dir, name: str, data: bytes):
    from core.runs.predict import load_for_prediction, predict_bytes

    return predict_bytes(load_for_prediction(run_dir), [(name, data)])[0]


def headings(at) -> list[str]:
    """The predicted class of each classified image, as the page titles its result."""
    return [m.value.removeprefix("### ") for m in at.markdown if m.value.startswith("### ")]


def test_without_runs_the_page_says_where_models_come_from(open_page):
    at = open_page("predict")
    assert not at.exception
    assert "No finished runs yet" in at.info[0].value


def test_the_best_transfer_run_classifies_an_upload(open_page, trained_runs, circle, caplog):
    at = open_page("predict", runs_dir=trained_runs["dir"])
    assert not at.exception and not at.error
    assert at.selectbox[0].value == trained_runs["mobilenet_v2"].name
    assert any("input 64x64" in m.value for m in at.markdown)
    at.file_uploader[0].set_value([(circle[0], circle[1], "image/jpeg")]).run()
    assert not at.exception and not at.error
    expected = expected_prediction(trained_runs["mobilenet_v2"], *circle)
    assert headings(at) == [expected.label]
    assert any(c.value == f"{expected.confidence:.1%} confident" for c in at.caption)
    assert len(at.get("plotly_chart")) == 1
    assert any("Reused from the shared cache" in m.value for m in at.markdown)  # loaded once, then reused
    # The server's part of the wait, in its log (a room's benchmark reads it).
    assert any(r.name == "app_pages.predict" and "1 image(s) classified in" in r.getMessage() for r in caplog.records)


def test_bad_files_get_one_error_each_and_the_rest_are_still_classified(open_page, trained_runs, circle):
    png = io.BytesIO()
    Image.new("RGB", (30, 20), (200, 30, 30)).save(png, "PNG")
    files = [
        ("empty.png", b"", "image/png"),
        (circle[0], circle[1], "image/jpeg"),
        ("noise.jpg", os.urandom(2048), "image/jpeg"),
        ("page.png", b"<html><body>not a picture</body></html>", "image/png"),
        ("truncated.jpg", circle[1][: len(circle[1]) // 3], "image/jpeg"),
        ("red.png", png.getvalue(), "image/png"),
    ]
    at = open_page("predict", runs_dir=trained_runs["dir"])
    at.file_uploader[0].set_value(files).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert [e.split(":")[0] for e in errors] == ["empty.png", "noise.jpg", "page.png", "truncated.jpg"]
    assert len(headings(at)) == 2
    assert any(c.value == "2 image(s) classified, 4 could not be read." for c in at.caption)


def test_a_camera_photo_is_classified(open_page, trained_runs, circle):
    at = open_page("predict", runs_dir=trained_runs["dir"])
    at.toggle(key="pred_camera").set_value(True).run()
    at.camera_input[0].set_value(("photo.jpg", circle[1], "image/jpeg")).run()
    assert not at.exception and not at.error
    assert headings(at) == [expected_prediction(trained_runs["mobilenet_v2"], *circle).label]
    assert any(img.proto.imgs[0].caption == "camera photo" for img in at.get("image"))


def test_a_replaced_model_file_is_loaded_again(open_page, trained_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained_runs["dir"], runs)
    at = open_page("predict", runs_dir=runs)
    at.run()
    assert any("Reused from the shared cache" in m.value for m in at.markdown)
    model = runs / trained_runs["mobilenet_v2"].name / "model.h5"
    os.utime(model, (model.stat().st_atime, model.stat().st_mtime + 60))
    at.run()
    assert any("Loaded from disk in" in m.value for m in at.markdown)


def test_h5_paths_load_or_say_what_is_wrong(open_page, trained_runs, tmp_path):
    at = open_page("predict", runs_dir=trained_runs["dir"])
    at.radio(key="pred_model_source").set_value("path").run()
    assert not at.exception
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("hello")
    at.text_input(key="pred_h5_path").set_value(str(not_h5)).run()
    assert "not an HDF5" in at.error[0].value
    at.text_input(key="pred_h5_path").set_value(str(tmp_path / "missing.h5")).run()
    assert "does not exist" in at.error[0].value
    # Whoever can type server paths runs the Lab locally, so the file's hub module may be any local folder
    # (the demo backbone here lives outside the Lab's cache and runs folders); uploads are held to more.
    at.text_input(key="pred_h5_path").set_value(str(trained_runs["mobilenet_v2"] / "model.h5")).run()
    assert not at.exception and not at.error
    assert any("classes: circles, squares" in m.value for m in at.markdown)


def test_a_model_without_class_names_gets_the_names_its_visitor_types(open_page, trained_runs, tmp_path, circle):
    """The article's notebook saves no class names: its classes show as numbers until someone names them."""
    import h5py

    model = tmp_path / "article.h5"
    shutil.copy(trained_runs["mobilenet_v2"] / "model.h5", model)
    with h5py.File(model, "a") as f:
        del f.attrs["lab_class_names"]
    at = open_page("predict", runs_dir=trained_runs["dir"])
    at.radio(key="pred_model_source").set_value("path").run()
    at.text_input(key="pred_h5_path").set_value(str(model)).run()
    assert not at.exception and not at.error
    assert any("classes: class 0, class 1" in m.value for m in at.markdown)
    at.file_uploader[0].set_value([(circle[0], circle[1], "image/jpeg")]).run()
    expected = expected_prediction(trained_runs["mobilenet_v2"], *circle)  # named by the original file
    numbered = f"class {['circles', 'squares'].index(expected.label)}"
    assert headings(at) == [numbered]

    at.text_input(key="pred_class_names").set_value("round").run()
    assert at.warning[0].value == "This model has 2 classes: give 2 names separated by commas."
    assert headings(at) == [numbered]
    at.text_input(key="pred_class_names").set_value("<b>round</b>,  boxy ").run()
    assert not at.exception and not at.warning
    named = {"circles": "<b>round</b>", "squares": "boxy"}[expected.label]
    assert headings(at) == [markdown_literal(named)]  # the visitor's own text, shown as text
    assert any(f"classes: {markdown_literal('<b>round</b>, boxy')} (named here)" in m.value for m in at.markdown)
    assert not any(w for w in at.warning)


def retrain_on_paper(run_dir, source: str) -> None:
    """Make a copied run claim another dataset, as a run trained on another folder would."""
    import json

    config = json.loads((run_dir / "config.json").read_text())
    config["data"]["source"] = source
    (run_dir / "config.json").write_text(json.dumps(config))


def test_run_labels_name_the_dataset_and_runs_on_the_current_dataset_come_first(open_page, trained_runs, tmp_path,
                                                                                demo_folder):
    runs = tmp_path / "runs"
    shutil.copytree(trained_runs["dir"], runs)
    transfer, baseline = trained_runs["mobilenet_v2"].name, trained_runs["baseline"].name
    retrain_on_paper(runs / transfer, "folder:/data/faces")
    at = open_page("predict", runs_dir=runs, state={"lab_source": f"folder:{demo_folder}"})
    assert not at.exception and not at.error
    assert at.selectbox[0].value == baseline  # trained on the current dataset, so before the better transfer run
    labels = at.selectbox[0].options
    assert any(label.startswith(f"Baseline CNN · {demo_folder.name} (circles, squares) · val ") for label in labels)
    assert any(label.startswith("Transfer (backbone) · faces (circles, squares) · val ") for label in labels)
    assert not at.warning
    at.selectbox[0].set_value(transfer).run()
    [warning] = [w.value for w in at.warning]
    assert warning == (f"This run was trained on faces, not on the current dataset ({demo_folder.name}): its "
                       "answers are among its own classes (circles, squares).")


def test_a_model_whose_classes_differ_from_the_loaded_dataset_is_flagged(open_page, trained_runs, tmp_path):
    faces = tmp_path / "faces"
    for name in ("happy", "sad"):
        (faces / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (64, 64), (40 * i, 90, 30)).save(faces / name / f"{i}.png")
    at = open_page("dataset", runs_dir=trained_runs["dir"])
    at.radio[0].set_value("folder").run()
    at.text_input[0].set_value(str(faces)).run()
    at.button[0].click().run()
    assert at.session_state["lab_source"] == f"folder:{faces}"
    at.switch_page("app_pages/predict.py").run()
    assert not at.exception and not at.error
    [warning] = [w.value for w in at.warning]
    assert warning.startswith("This model's classes (circles, squares) are not those of the current dataset, "
                              "faces (happy, sad): it can only answer with its own classes.")
    assert any(m.value.startswith("trained on ") and "classes: circles, squares" in m.value for m in at.markdown)


def test_no_dataset_warning_until_the_session_has_chosen_a_dataset(open_page, trained_runs):
    at = open_page("predict", runs_dir=trained_runs["dir"])
    assert not at.exception and not at.warning


def test_class_names_from_an_uploaded_model_are_shown_as_text(open_page, trained_runs, tmp_path):
    import h5py

    hostile = ["<img src=x onerror=alert(1)>", "[x](javascript:alert(1))"]
    model = tmp_path / "hostile.h5"
    shutil.copy(trained_runs["baseline"] / "model.h5", model)
    with h5py.File(model, "a") as f:
        f.attrs["lab_class_names"] = __import__("json").dumps(hostile)
    at = open_page("predict", runs_dir=trained_runs["dir"])
    at.radio(key="pred_model_source").set_value("upload").run()
    at.file_uploader(key="up_model").set_value(("hostile.h5", model.read_bytes(), "application/octet-stream")).run()
    assert not at.exception and not at.error
    [line] = [m for m in at.markdown if "classes: " in m.value]
    assert not line.proto.allow_html
    assert r"&lt;img src=x onerror=alert\(1\)&gt;, \[x\]\(javascript\:alert\(1\)\)" in line.value
