"""BAD_INPUTS.md end to end: every bad input goes in through the pages a visitor would use.

Each case must end in one readable st.error (never a traceback), leave nothing behind that looks usable,
and leave the session working: where a page takes uploads, a good one sent after the bad ones is still
served. The core-level checks of the same inputs live in tests/unit/data and tests/unit/safety.
"""
from __future__ import annotations

import io
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from hostile_files import lambda_model_file, with_handle
from lab_helpers import TEST_IMAGE_SIZE, followed_job, make_zip, wait_for_job
from PIL import Image
from sample_images import GOOD, png_bomb

from core.runs.folders import INCOMPLETE_PREFIX, RunWriter

ARTICLE_URL = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def headings(at) -> list[str]:
    return [m.value.removeprefix("### ") for m in at.markdown if m.value.startswith("### ")]


def png(colour=(200, 30, 30), size=(12, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def circle(demo_folder) -> tuple[str, bytes]:
    path = min((demo_folder / "circles").iterdir())
    return path.name, path.read_bytes()


# ------------------------------------------------------------------ images uploaded on the Predict page


def test_every_unusual_image_is_classified_and_each_bad_one_gets_one_error(open_page, trained_runs):
    """The image cases test_app_predict does not send through the page: the decompression bomb, an SVG
    named .png, and every legitimate oddity (8000x6000 photo, EXIF rotation, CMYK, 16-bit, GIF, ...)."""
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    bad = [("bomb.png", png_bomb()), ("drawing.png", svg)]
    good = [(name, make()) for name, make in sorted(GOOD.items())]
    files = [(name, data, "image/png") for name, data in bad[:1] + good[:6] + bad[1:] + good[6:]]
    at = open_page("predict", runs_dir=trained_runs["dir"])
    at.file_uploader[0].set_value(files).run()
    assert not at.exception
    assert len(errors(at)) == 2
    assert errors(at)[0].startswith("bomb.png: 30000x30000 pixels is over the 64 megapixel limit")
    assert errors(at)[1].startswith("drawing.png: not a readable image")
    assert len(headings(at)) == len(good)
    assert set(headings(at)) <= {"circles", "squares"}
    assert f"{len(good)} image(s) classified, 2 could not be read." in [c.value for c in at.caption]
    assert sorted(img.proto.imgs[0].caption for img in at.get("image")) == sorted(n for n, _ in good)


# ------------------------------------------------------------------ model files uploaded on the Predict page


def h5_bytes(model) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.h5"
        model.save(str(path), save_format="h5")
        return path.read_bytes()


def odd_input_model(shape) -> bytes:
    import tf_keras

    return h5_bytes(tf_keras.Sequential([tf_keras.Input(shape=shape), tf_keras.layers.Conv2D(2, 3),
                                         tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(2)]))


def custom_layer_model() -> bytes:
    import tf_keras

    class Scale(tf_keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    return h5_bytes(tf_keras.Sequential([tf_keras.Input(shape=(4,)), Scale(), tf_keras.layers.Dense(2)]))


def stored_uploads() -> set[Path]:
    from core.settings.paths import uploads_dir

    return set(uploads_dir().glob("*.h5")) | set(uploads_dir().glob(".partial-*"))


def upload_model(at, name: str, data: bytes) -> None:
    at.file_uploader(key="up_model").set_value((name, data, "application/octet-stream")).run()


def test_bad_model_uploads_get_one_error_each_and_a_good_one_still_serves(open_page, trained_runs, tmp_path,
                                                                          demo_backbone, circle):
    from core.runs.predict import load_for_prediction, predict_bytes
    from core.settings.paths import cache_dir

    transfer_h5 = trained_runs["mobilenet_v2"] / "model.h5"
    baseline_h5 = (trained_runs["baseline"] / "model.h5").read_bytes()
    lambda_h5, marker = lambda_model_file(tmp_path)
    cases = [
        ("notes.h5", b"just some text, not a model", "'notes.h5' is not an HDF5 (.h5) model file."),
        ("cut.h5", baseline_h5[: len(baseline_h5) // 2], "'cut.h5' is damaged or truncated"),
        ("lambda.h5", lambda_h5.read_bytes(), "'lambda.h5' contains a Lambda layer, which runs stored Python code"),
        ("custom.h5", custom_layer_model(), "'custom.h5' uses a custom layer 'Scale'"),
        # The demo backbone sits in a test folder, outside the Lab's cache and runs folders.
        ("transfer.h5", transfer_h5.read_bytes(), "'transfer.h5' points its KerasLayer at"),
        ("elsewhere.h5", with_handle(transfer_h5, tmp_path / "e.h5", "https://example.com/module").read_bytes(),
         "'elsewhere.h5' points its KerasLayer at 'https://example.com/module', which uploaded models may not use"),
        ("online.h5", with_handle(transfer_h5, tmp_path / "o.h5", ARTICLE_URL).read_bytes(),
         "'online.h5' needs its hub module to load. The network is unreachable"),
        ("grey.h5", odd_input_model((32, 32, 1)),
         "'grey.h5' expects input of shape (None, 32, 32, 1); the Lab needs square RGB images."),
        ("huge.h5", odd_input_model((2048, 2048, 3)),
         "'huge.h5' expects 2048x2048 images; the Lab classifies at most 1024x1024."),
    ]
    at = open_page("predict", runs_dir=trained_runs["dir"])
    at.radio(key="pred_model_source").set_value("upload").run()
    assert not at.exception and "Upload a Keras .h5 model" in at.info[0].value
    assert at.file_uploader(key="up_model").label == "A Keras .h5 model (up to 200 MB)"
    before = stored_uploads()
    for name, data, message in cases:
        upload_model(at, name, data)
        assert not at.exception, name
        assert len(errors(at)) == 1 and errors(at)[0].startswith(message), (name, errors(at))
        assert len(at.file_uploader) == 1  # no image uploader under a model that did not load
    assert not marker.exists()  # the Lambda's stored code never ran
    # Files the inspection refused were never kept. The three that passed it and failed later (a hub module
    # not in the cache offline, the input shapes) are safe to keep, under content-derived names only.
    kept = stored_uploads() - before
    assert len(kept) == 3 and all(p.name.startswith("model-") and p.suffix == ".h5" for p in kept)

    # After all that, a transfer model whose hub module lives in the Lab's cache folder loads and serves.
    backbone = cache_dir() / "uploaded-backbones" / "shapes"
    shutil.copytree(demo_backbone, backbone, dirs_exist_ok=True)
    upload_model(at, "mine.h5", with_handle(transfer_h5, tmp_path / "mine.h5", str(backbone)).read_bytes())
    assert not at.exception and not at.error
    assert any("**mine.h5**" in m.value and "classes: circles, squares" in m.value for m in at.markdown)
    at.file_uploader(key="up_images").set_value([(circle[0], circle[1], "image/jpeg")]).run()
    assert not at.exception and not at.error
    (expected,) = predict_bytes(load_for_prediction(trained_runs["mobilenet_v2"]), [circle])
    assert headings(at) == [expected.label]  # the same weights as the run it was saved from


# ------------------------------------------------------------------ zips uploaded on the Dataset page


def classes_zip(extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    return {f"cats/{i}.png": png((200, 30, 30)) for i in range(3)} | {
        f"dogs/{i}.png": png((30, 30, 200)) for i in range(3)} | (extra or {})


def symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in classes_zip().items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("cats/passwords.png")
        link.create_system = 3  # unix, where the mode bits below mark a symbolic link
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def zip_bomb(members: int = 11, member_bytes: int = 100 * 1024**2) -> bytes:
    """A valid zip of `members` files of zeros, each 100 MiB unpacked and about 100 KB packed.

    One compressed stream is written under every name (zipfile cannot reuse one), so making 1.2 GB of
    bomb costs one 100 MiB compression instead of eleven.
    """
    chunk = b"\0" * 1024**2
    compressor, crc, packed = zlib.compressobj(6, zlib.DEFLATED, -15), 0, []
    for _ in range(member_bytes // len(chunk)):
        packed.append(compressor.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    data = b"".join(packed) + compressor.flush()
    out, central = io.BytesIO(), io.BytesIO()
    for i in range(members):
        name = f"{'cats' if i % 2 else 'dogs'}/{i}.bmp".encode()
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), member_bytes,
                              len(name), 0) + name + data)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data),
                                  member_bytes, len(name), 0, 0, 0, 0, 0, offset) + name)
    directory, start = central.getvalue(), out.tell()
    out.write(directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, members, members, len(directory), start, 0))
    return out.getvalue()


def many_files_zip(count: int = 60_001) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"cats/{i}.png", b"")
    return buffer.getvalue()


def test_unsafe_zips_are_refused_on_the_dataset_page_and_a_good_one_still_loads(open_page, tmp_path):
    from core.settings.paths import uploads_dir

    escaped = tmp_path / "abs-evil.png"
    bomb = zip_bomb()
    assert len(bomb) < 2_000_000  # small to upload, 1.2 GB to unpack
    cases = [
        ("slip.zip", make_zip(classes_zip({"../evil.png": png()})),
         "The zip contains a path that leaves its folder ('../evil.png'); refusing to extract it."),
        ("absolute.zip", make_zip(classes_zip({str(escaped): png()})),
         f"The zip contains an absolute path ('{escaped}'); refusing to extract it."),
        ("links.zip", symlink_zip(),
         "The zip contains a symbolic link ('cats/passwords.png'); refusing to extract it."),
        ("bomb.zip", bomb, "The zip would unpack to 1.2 GB; the limit is 1.1 GB."),
        ("many.zip", many_files_zip(), "The zip holds 60,001 files; the limit is 60,000."),
        ("notes.zip", make_zip({"readme.md": b"# hi", "data.csv": b"a,b"}), "The zip holds no images"),
    ]
    at = open_page("dataset")
    at.radio[0].set_value("zip").run()
    for name, data, message in cases:
        at.file_uploader[0].set_value((name, data, "application/zip")).run()
        assert not at.exception, name
        assert len(errors(at)) == 1 and errors(at)[0].startswith(message), (name, errors(at))
        assert at.button[0].disabled, name  # nothing to load
    assert not escaped.exists() and not (uploads_dir() / "evil.png").exists()
    assert not list(uploads_dir().glob(".partial-*"))
    assert "lab_source" not in at.session_state

    at.file_uploader[0].set_value(("good.zip", make_zip(classes_zip({"notes.txt": b"hi"})), "application/zip")).run()
    assert not at.exception and not at.error
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert next(m.value for m in at.metric if m.label == "Classes") == "2"


# ------------------------------------------------------------------ dataset folders on the Dataset page


def write_class(folder: Path, count: int, colour=(200, 30, 30)) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"{i}.png").write_bytes(png(colour, (20, 20)))


def test_unusable_folders_get_one_error_and_an_empty_class_is_left_out(open_page, tmp_path):
    empty, single, partial = tmp_path / "empty", tmp_path / "single", tmp_path / "partial"
    empty.mkdir()
    write_class(single / "only", 10)
    write_class(partial / "a", 10)
    write_class(partial / "b", 10, (30, 30, 200))
    (partial / "c").mkdir()
    (partial / "c" / "readme.txt").write_text("no pictures yet")
    at = open_page("dataset")
    at.radio[0].set_value("folder").run()
    for folder, message in ((empty, "needs at least two class sub-folders with images in them"),
                            (single, "found only 'only'")):
        at.text_input[0].set_value(str(folder)).run()
        at.button[0].click().run()
        assert not at.exception
        assert len(errors(at)) == 1 and message in errors(at)[0], errors(at)
        assert "lab_source" not in at.session_state
    at.text_input[0].set_value(str(partial)).run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert next(m.value for m in at.metric if m.label == "Classes") == "2"
    assert "Class folders with no readable images were left out: c." in [c.value for c in at.caption]


# ------------------------------------------------------------------ settings on the Experiments page


def training_state(demo_folder, handle) -> dict:
    return {"lab_source": f"folder:{demo_folder}", "lab_handle": str(handle), "exp_image_size": TEST_IMAGE_SIZE,
            "exp_b_epochs": 1, "exp_t_epochs": 1, "exp_b_batch": 16, "exp_t_batch": 16}


def test_epochs_below_one_and_a_batch_larger_than_the_dataset(open_page, demo_folder, demo_backbone):
    at = open_page("experiments", state=dict(training_state(demo_folder, demo_backbone), exp_b_batch=100))
    for value in (0, -5):
        at.number_input(key="exp_b_epochs").set_value(value).run()
        assert at.number_input(key="exp_b_epochs").value == 1  # the field keeps its minimum
    at.button(key="run_baseline").click().run()
    snap = wait_for_job(at)
    assert snap.phase == "failed" and snap.run_dirs == ()
    assert not at.exception
    assert errors(at) == [("Batch size 100 is larger than the 96 training images; use a smaller batch size or "
                           "more images.")]


@pytest.fixture(scope="module")
def fixed_224_module(tmp_path_factory) -> Path:
    """A SavedModel feature extractor that only accepts 224x224 images, like the article's module."""
    import tensorflow as tf

    class Fixed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, axis=[1, 2])

    path = tmp_path_factory.mktemp("hub") / "fixed224"
    tf.saved_model.save(Fixed(), str(path))
    return path.resolve()


def test_an_image_size_the_hub_module_refuses(open_page, demo_folder, fixed_224_module):
    message = f"The hub module '{fixed_224_module}' could not be used with 64x64 RGB input"
    at = open_page("experiments", state=training_state(demo_folder, fixed_224_module))
    assert not at.exception
    assert [e for e in errors(at) if e.startswith(f"No estimate: {message}")]
    assert "takes 224x224 images" in errors(at)[0]
    at.button(key="run_mobilenet_v2").click().run()
    snap = wait_for_job(at)
    assert snap.phase == "failed" and snap.run_dirs == ()
    assert snap.message.startswith(message)
    assert snap.message in errors(at)


# ------------------------------------------------------------------ a public host (the cloud preset)


def test_public_host_offers_no_server_paths_and_queues_trainings_beyond_its_limit(open_page, monkeypatch, demo_folder,
                                                                         demo_backbone, trained_runs):
    import os

    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.settings.paths import uploads_dir
    from core.training.board import Board
    from core.training.jobs import Experiment

    monkeypatch.setenv("LAB_PRESET", "cloud")
    uploaded = uploads_dir() / "zip-robustness" / "shapes"  # where an uploaded zip would have been unpacked
    shutil.copytree(demo_folder, uploaded, dirs_exist_ok=True)
    dataset = open_page("dataset")
    assert dataset.radio[0].options == ["cats_vs_dogs (TFDS, the article's)", "Another TFDS dataset",
                                        "Upload a zip", "Generated demo (works offline)"]
    predict = open_page("predict", runs_dir=trained_runs["dir"])
    assert predict.radio(key="pred_model_source").options == ["A saved run", "Upload an .h5 file"]
    assert not predict.exception and not predict.error  # runs the Lab saved itself are still offered

    at = open_page("experiments", state=training_state(uploaded, demo_backbone))
    assert not at.exception
    # One answer for every server folder, which neither repeats the path nor says whether it exists.
    assert ("No estimate: This server only uses TF Hub / Kaggle URLs or folders inside its cache or runs folder "
            "as the hub handle.") in errors(at)
    assert not any(str(demo_backbone) in error for error in errors(at))
    at.button(key="run_mobilenet_v2").click().run()
    assert not at.session_state["exp_following"] if "exp_following" in at.session_state else True
    assert any(e.startswith("This server only uses TF Hub") for e in errors(at))

    # Another session's training holds the only slot: a new one waits in line and says so.
    runs = Path(os.environ["LAB_RUNS_DIR"])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        other = Board(runs, launcher=lambda path: sleeper).submit(
            [Experiment(DataConfig(source="folder:x"), TrainConfig(model=ModelKind.BASELINE), 30.0)], ["other"],
            owner="someone-else")
        at.button(key="run_baseline").click().run()
        assert not at.exception
        assert "**Baseline CNN** · yours" in [m.value for m in at.markdown]
        waiting = [p.proto.text for p in at.get("progress") if p.proto.text.startswith("Waiting")]
        assert waiting and waiting[0].startswith("Waiting: 1st in line")
        # A stranger's training cannot be stopped from here; one's own queued job can be cancelled.
        assert not [b for b in at.button if b.key == f"stop_{other.job_id}"]
        mine = followed_job(at)
        assert at.button(key=f"stop_{mine.job_id}").label == "Cancel"
        at.button(key=f"stop_{mine.job_id}").click().run()
        assert followed_job(at).snapshot.message == "Cancelled before it started; nothing was trained."
    finally:
        sleeper.kill()
        sleeper.wait()


# ------------------------------------------------------------------ killed and damaged runs


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_history_survives_damaged_folders_and_sheds_what_killed_runs_left(open_page, trained_runs, tmp_path):
    runs = tmp_path / "history"
    shutil.copytree(trained_runs["dir"], runs)
    damage = {
        "20250101-000001-baseline-badjson": lambda p: (p / "history.json").write_text('[{"loss": 0.5,'),
        "20250101-000002-baseline-nomodel": lambda p: (p / "model.h5").unlink(),
        "20250101-000003-baseline-shape": lambda p: (p / "config.json").write_text("[1, 2, 3]"),
    }
    for name, edit in damage.items():
        shutil.copytree(trained_runs["baseline"], runs / name)
        edit(runs / name)
    killed = RunWriter(runs, "20250101-000004-baseline-killed")  # as a SIGKILLed writer leaves it
    (killed.tmp / "owner.pid").write_text(str(dead_pid()))
    (killed.tmp / "config.json").write_text("{}")
    writing = RunWriter(runs, "20250101-000005-baseline-writing")  # this process is still writing it

    at = open_page("experiments", runs_dir=runs)
    assert not at.exception
    assert not killed.tmp.exists()  # cleaned when the app started
    assert writing.tmp.is_dir() and all((runs / name).is_dir() for name in damage)  # never deleted for you
    assert sorted(at.multiselect[0].value) == sorted([trained_runs["baseline"].name,
                                                      trained_runs["mobilenet_v2"].name])
    assert any(e.label == "4 unfinished or damaged run folder(s), not shown" for e in at.expander)
    listed = next(c.value for c in at.code if "badjson" in c.value)
    assert set(listed.splitlines()) == set(damage) | {writing.tmp.name}
    assert {"results_acc", "results_loss"} <= {chart.key for chart in at.get("plotly_chart")}

    predict = open_page("predict", runs_dir=runs)
    assert not predict.exception and not predict.error
    offered = {option.rsplit(" · ", 1)[-1] for option in predict.selectbox[0].options}
    assert offered == {trained_runs["baseline"].name, trained_runs["mobilenet_v2"].name}
    writing.abandon()
    assert not any(p.name.startswith(INCOMPLETE_PREFIX) for p in runs.iterdir())
