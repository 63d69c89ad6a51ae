"""Model files a hostile visitor could bring, shared by the core tests and the page tests."""
from __future__ import annotations

import json
from pathlib import Path

import h5py


def lambda_model_file(tmp_path: Path, wrapped: bool = False) -> tuple[Path, Path]:
    """An .h5 whose Lambda layer writes a marker file whenever its stored code runs.

    wrapped puts the Lambda inside TimeDistributed, where it sits in the wrapper's config, not in the
    model's layer list.
    """
    import tf_keras

    marker = tmp_path / "lambda-ran.txt"
    # Built from source so the stored bytecode holds the marker path as a constant, not a closure.
    fn = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")
    if wrapped:
        layers = [tf_keras.Input(shape=(3, 8)), tf_keras.layers.TimeDistributed(tf_keras.layers.Lambda(fn)),
                  tf_keras.layers.Flatten()]
    else:
        layers = [tf_keras.layers.Lambda(fn, input_shape=(8,))]
    model = tf_keras.Sequential(layers + [tf_keras.layers.Dense(2)])
    path = tmp_path / "lambda.h5"
    model.save(str(path), save_format="h5")
    marker.unlink(missing_ok=True)  # building and saving ran it; only a later load may not
    return path, marker

def edit_config(src: Path, dst: Path, edit) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "a") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
    return dst

def with_handle(src: Path, dst: Path, handle: str) -> Path:
    """A copy of a transfer model's .h5 whose KerasLayer points at another handle."""
    def edit(config):
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "KerasLayer":
                layer["config"]["handle"] = handle

    return edit_config(src, dst, edit)
