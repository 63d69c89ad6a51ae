""".h5 files whose weights lie in other files of the server or are declared far larger than what the file
stores: refused from the file's layout before tf_keras opens them (core.safety.hdf5_layout). Where the
attack reads a server file, the test shows that tf_keras itself would have read it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_files import (
    with_external_link,
    with_external_storage,
    with_shared_text,
    with_unstored_weight,
    with_virtual_weight,
    with_weight_shape,
)

from core.safety.model_files import inspect_model_file, load_model, save_model
from core.settings.errors import ModelFileError

REPO = Path(__file__).resolve().parents[3]
BIAS = "model_weights/head/head/bias:0"
MOMENT = "optimizer_weights/Adam/m/head/bias:0"
SECRET = b"secret!\x00"  # what a server file holds: two float32 values' worth


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 12x12 RGB -> Conv2D -> Flatten -> Dense(2, 'head') model after one Adam step, saved as the Lab saves."""
    import tf_keras

    from core.models.architectures import compile_model

    model = tf_keras.Sequential([tf_keras.Input((12, 12, 3)), tf_keras.layers.Conv2D(4, 3, name="conv"),
                                 tf_keras.layers.Flatten(), tf_keras.layers.Dense(2, name="head")])
    compile_model(model, 1e-3)
    model.fit(np.zeros((4, 12, 12, 3), np.float32), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("model") / "small.h5"
    save_model(model, path, ["a", "b"])
    with h5py.File(path, "r") as f:
        assert BIAS in f and MOMENT in f
    return path


@pytest.fixture
def secret_file(tmp_path) -> Path:
    path = tmp_path / "server-secret"
    path.write_bytes(SECRET)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ModelFileError) as refused:
        load_model(path)
    message = str(refused.value)
    assert message.startswith(f"'{path.name}' ") and "\n" not in message and len(message) < 400
    return message


def test_a_weight_kept_in_a_server_file_is_refused_and_tf_keras_would_read_it(trained, secret_file, tmp_path):
    import tf_keras

    path = with_external_storage(trained, tmp_path / "external.h5", BIAS, secret_file)
    message = refusal(path)
    assert "keeps the weight 'model_weights/head/head/bias:0' in another file (HDF5 external storage)" in message
    assert str(secret_file) not in message and secret_file.name not in message
    # Without the check, the server file's bytes become the layer's bias.
    model = tf_keras.models.load_model(str(path))
    assert model.get_layer("head").bias.numpy().tobytes() == SECRET


def test_an_optimizer_weight_kept_in_a_server_file_is_refused_and_tf_keras_would_read_it(trained, secret_file,
                                                                                         tmp_path):
    import tf_keras

    path = with_external_storage(trained, tmp_path / "external.h5", MOMENT, secret_file)
    assert "(HDF5 external storage)" in refusal(path)
    model = tf_keras.models.load_model(str(path))
    [moment] = [v for v in model.optimizer.variables() if "m/head/bias" in v.name]
    assert moment.numpy().tobytes() == SECRET


def test_a_virtual_weight_from_another_file_is_refused(trained, tmp_path):
    values = np.array([7.0, 9.0], np.float32)
    path = with_virtual_weight(trained, tmp_path / "virtual.h5", BIAS, tmp_path / "elsewhere.h5", values)
    assert "makes 'model_weights/head/head/bias:0' a virtual dataset" in refusal(path)
    with h5py.File(path, "r") as f:  # HDF5 itself assembles it from the other file
        np.testing.assert_array_equal(f[BIAS][()], values)


def test_a_weight_linked_to_another_file_is_refused(trained, tmp_path):
    values = np.array([3.0, 4.0], np.float32)
    path = with_external_link(trained, tmp_path / "linked.h5", BIAS, tmp_path / "elsewhere.h5", values)
    assert "links 'model_weights/head/head/bias:0' to another file (an HDF5 external link)" in refusal(path)
    with h5py.File(path, "r") as f:  # HDF5 itself follows it into the other file
        np.testing.assert_array_equal(f[BIAS][()], values)


BOMB_CHILD = """
import json, resource, sys, tf_keras
from core.safety.model_files import inspect_model_file
from core.settings.errors import ModelFileError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    inspect_model_file(sys.argv[1])
    refused = None
except ModelFileError as exc:
    refused = str(exc)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"refused": refused, "grown_kb": grown}))
"""


def test_a_3_gib_bias_that_stores_nothing_is_refused_allocating_next_to_nothing(trained, tmp_path):
    path = with_unstored_weight(trained, tmp_path / "bomb.h5", BIAS, 3 * 2**30)
    assert path.stat().st_size < 200_000
    message = refusal(path)
    assert "declares 3,221 MB of weights that it does not store" in message and "bias:0" in message
    # The peak memory of a process that only inspects it (tf_keras imported first, as inspection imports it).
    out = subprocess.run([sys.executable, "-c", BOMB_CHILD, str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "does not store" in result["refused"]
    assert result["grown_kb"] < 30_000


def test_an_unstored_optimizer_moment_is_refused(trained, tmp_path):
    path = with_unstored_weight(trained, tmp_path / "bomb.h5", MOMENT, 512 * 2**20)
    assert "declares 537 MB of weights that it does not store" in refusal(path)


def test_a_weight_whose_shape_contradicts_its_layer_is_refused(trained, tmp_path):
    path = with_weight_shape(trained, tmp_path / "shape.h5", BIAS, (1000,))
    assert ("declares the weight 'head/bias:0' with shape (1000,), but its layer's config makes it (2)"
            in refusal(path))
    moment = with_weight_shape(trained, tmp_path / "moment.h5", MOMENT, (2, 2))
    assert "declares the weight 'Adam/m/head/bias:0' with shape (2, 2)" in refusal(moment)


def test_a_weight_named_twice_is_refused(trained, tmp_path):
    """tf_keras reads every name a layer lists before it counts them: one weight listed n times is read n times."""
    path = tmp_path / "twice.h5"
    path.write_bytes(trained.read_bytes())
    with h5py.File(path, "a") as f:
        f["model_weights/conv"].attrs["weight_names"] = ["conv/kernel:0"] * 50
    assert "names the weight 'conv/kernel:0' more than once" in refusal(path)


def test_names_that_all_point_at_one_stored_string_are_refused(trained, tmp_path):
    """Reading a list of names allocates each element's length: 300 elements sharing one 100 kB string read
    30 MB out of a file that grew by a few kB."""
    path = with_shared_text(trained, tmp_path / "shared.h5", "optimizer_weights", "weight_names", 100_000, 300)
    with h5py.File(path, "r") as f:
        assert sum(len(n) for n in f["optimizer_weights"].attrs["weight_names"]) == 30_000_000
    assert path.stat().st_size < trained.stat().st_size + 120_000
    assert "references to text stored once" in refusal(path)


def test_a_soft_link_is_refused(trained, tmp_path):
    path = tmp_path / "soft.h5"
    path.write_bytes(trained.read_bytes())
    with h5py.File(path, "a") as f:
        f["model_weights/alias"] = h5py.SoftLink("/" + BIAS)
    assert "makes 'model_weights/alias' a soft link" in refusal(path)


def test_a_keras_file_written_in_hdf5s_newest_format_is_read_too(trained, tmp_path):
    """Object headers of version 2 (h5py's libver='latest'), as another program may rewrite a model."""
    path = tmp_path / "latest.h5"
    with h5py.File(trained, "r") as src, h5py.File(path, "w", libver="latest") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for key in src:
            src.copy(src[key], dst, name=key)
    assert inspect_model_file(path).weight_bytes == inspect_model_file(trained).weight_bytes > 0


def test_the_labs_own_file_states_what_loading_it_reads(trained):
    info = inspect_model_file(trained)
    with h5py.File(trained, "r") as f:
        arrays = []
        f.visititems(lambda _name, obj: arrays.append(obj.nbytes) if isinstance(obj, h5py.Dataset) else None)
    assert info.weight_bytes == sum(arrays) > 0


# ---------------------------------------------------------------- every way a model file reaches tf_keras


def test_a_model_in_the_runs_folder_is_checked_again_before_it_is_loaded(trained, secret_file, tmp_path,
                                                                         monkeypatch):
    from core.runs.predict import load_for_prediction

    monkeypatch.setenv("LAB_PRESET", "cloud")
    run = tmp_path / "runs" / "20300101-000000-baseline"
    run.mkdir(parents=True)
    with_external_storage(trained, run / "model.h5", BIAS, secret_file)
    with pytest.raises(ModelFileError, match=r"^'model.h5' keeps the weight .* \(HDF5 external storage\)"):
        load_for_prediction(run)


def test_an_imported_run_whose_model_reads_a_server_file_is_refused(trained_runs, secret_file, tmp_path):
    import io
    import zipfile

    from core.runs.archives import import_run_zip

    run = trained_runs["baseline"]
    with h5py.File(run / "model.h5", "r") as f:
        layers = f["model_weights"]
        path = next(f"model_weights/{layer}/{name}" for layer in layers.attrs["layer_names"]
                    for name in layers[layer].attrs["weight_names"] if name.endswith("bias:0"))
    hostile = with_external_storage(run / "model.h5", tmp_path / "model.h5", path, secret_file)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for item in sorted(run.rglob("*")):
            if item.is_file():
                archive.write(hostile if item.name == "model.h5" else item, f"{run.name}/{item.relative_to(run)}")
    runs = tmp_path / "runs"
    with pytest.raises(ModelFileError, match=r"\(HDF5 external storage\)"):
        import_run_zip(buffer.getvalue(), runs)
    assert not runs.exists() or not any(runs.iterdir())
