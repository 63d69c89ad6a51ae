"""Model files whose config alone would cost memory or a traceback: bounded in size, depth, names and
declared parameters, and read without building anything (core.safety.model_files)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_files import edit_config

from core.safety.model_files import (
    MAX_DECLARED_PARAMS,
    _declared_params,
    inspect_model_file,
    load_model,
    save_model,
)
from core.settings.errors import ModelFileError


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A saved 12x12 RGB -> Flatten -> Dense(2) model with class names, as the Lab writes one."""
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((12, 12, 3)), tf_keras.layers.Conv2D(4, 3),
                                 tf_keras.layers.Flatten(), tf_keras.layers.Dense(2, activation="softmax")])
    path = tmp_path_factory.mktemp("model") / "small.h5"
    save_model(model, path, ["a", "b"])
    return path


def with_attr(src: Path, dst: Path, name: str, value) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "a") as f:
        f.attrs[name] = value
    return dst


@pytest.fixture
def never_built(monkeypatch):
    """Fail the test if anything gets as far as building or deserialising a model."""
    import tf_keras

    def refuse(*args, **kwargs):
        raise AssertionError("a refused model file was built")

    monkeypatch.setattr(tf_keras.models, "load_model", refuse)


def test_a_declared_enormous_dense_is_refused_before_building(small_model, tmp_path, never_built):
    def huge(config):  # 12288 inputs x 40000 units: 2 GB of float32 once built, 6 KB on disk
        config["config"]["layers"][0]["config"]["batch_input_shape"] = [None, 64, 64, 3]
        config["config"]["layers"][1]["config"]["padding"] = "same"
        config["config"]["layers"][1]["config"]["filters"] = 3
        config["config"]["layers"][-1]["config"]["units"] = 40000

    path = edit_config(small_model, tmp_path / "huge.h5", huge)
    with pytest.raises(ModelFileError, match=r"declares about 492 million parameters.*up to 60 million"):
        load_model(path)


def test_the_declared_count_matches_real_models_and_errs_high():
    import tf_keras

    from core.models.architectures import build_baseline

    for model, exact in ((build_baseline(2, 150), True),
                         (tf_keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3)), False)):
        declared = _declared_params(json.loads(model.to_json()))
        assert declared == model.count_params() if exact else model.count_params() <= declared < 1.05 * model.count_params()
        assert declared < MAX_DECLARED_PARAMS


NESTED = "[" * 50_000 + "]" * 50_000
MALFORMED = {
    "config a list": ("model_config", json.dumps([1, 2])),
    "config null": ("model_config", "null"),
    "config a string": ("model_config", json.dumps("Sequential")),
    "config an int array": ("model_config", np.arange(8)),
    "config nested 50,000 deep": ("model_config", NESTED),
    "config nested 100 deep": ("model_config", json.dumps(
        {"class_name": "Sequential", "config": {"layers": [], "x": json.loads("[" * 100 + "]" * 100)}})),
    "layers not objects": ("model_config", json.dumps({"class_name": "Sequential", "config": {"layers": [1, "x"]}})),
    "a layer class name a list": ("model_config", json.dumps(
        {"class_name": "Sequential", "config": {"layers": [{"class_name": ["Dense"], "config": {}}]}})),
    "a 5 MB layer name": ("model_config", json.dumps(
        {"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"name": "n" * 5 * 10**6}}]}})),
    "a 10 kB layer name": ("model_config", json.dumps(
        {"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"name": "n" * 10**4}}]}})),
    "config not UTF-8": ("model_config", np.bytes_(b"\xff\xfe{")),
    "class names nested deep": ("lab_class_names", NESTED),
    "class names an object": ("lab_class_names", json.dumps({"a": 1})),
    "class names too long": ("lab_class_names", json.dumps(["a" * 1000, "b"])),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_model_attributes_get_one_line(case, small_model, tmp_path, never_built):
    attr, value = MALFORMED[case]
    path = with_attr(small_model, tmp_path / "bad.h5", attr, value)
    with pytest.raises(ModelFileError) as refused:
        inspect_model_file(path)
    message = str(refused.value)
    assert message.startswith("'bad.h5' ") and "\n" not in message and len(message) < 300


def test_the_small_model_itself_is_accepted(small_model):
    info = inspect_model_file(small_model)
    assert info.class_names == ["a", "b"] and info.input_size == 12 and info.num_outputs == 2
