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


# Names that run script in the page if any of them is ever rendered as HTML or followed as a link: each
# records that it ran in window.__xss (the iframe's srcdoc shares the app's origin, so it reaches parent).
XSS_KIND = "<iframe srcdoc=\"<script>parent.__xss='kind'</script>\"></iframe>"
XSS_CLASSES = ["<img src=x onerror=\"window.__xss='class'\">", "[tap](javascript:window.__xss='link')"]


def hostile_run(src: Path, runs_dir: Path, name: str = "20300101-000000-hostile") -> Path:
    """A copy of a finished run whose model kind and class names (config.json and the .h5) are the XSS_ names."""
    import shutil

    dst = runs_dir / name
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["train"]["model"] = XSS_KIND
    config["class_names"] = XSS_CLASSES
    (dst / "config.json").write_text(json.dumps(config))
    with h5py.File(dst / "model.h5", "a") as f:
        f.attrs["lab_class_names"] = json.dumps(XSS_CLASSES)
    shutil.rmtree(dst / "evaluation", ignore_errors=True)
    (dst / "evaluation.json").unlink(missing_ok=True)
    return dst
