"""Model files a hostile visitor could bring, shared by the core tests and the page tests."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np


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


# ---------------------------------------------------------------- .h5 files whose data lies outside or is not there


def replace_dataset(src: Path, dst: Path, path: str, make) -> Path:
    """A copy of an .h5 whose dataset at path is deleted and made again by make(f, path, shape, dtype)."""
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "a") as f:
        shape, dtype = f[path].shape, f[path].dtype
        del f[path]
        make(f, path, shape, dtype)
    return dst


def with_external_storage(src: Path, dst: Path, path: str, outside: Path) -> Path:
    """The weight at path keeps its bytes in the file outside (HDF5 external storage), from its start."""
    def make(f, name, shape, dtype):
        size = int(np.prod(shape)) * dtype.itemsize
        f.create_dataset(name, shape, dtype, external=[(str(outside), 0, size)])

    return replace_dataset(src, dst, path, make)


def with_virtual_weight(src: Path, dst: Path, path: str, source: Path, values) -> Path:
    """The weight at path is a virtual dataset whose values are the dataset 'data' of another HDF5 file."""
    with h5py.File(source, "w") as other:
        other["data"] = values

    def make(f, name, shape, dtype):
        layout = h5py.VirtualLayout(shape, dtype)
        layout[...] = h5py.VirtualSource(str(source), "data", shape=shape)
        f.create_virtual_dataset(name, layout)

    return replace_dataset(src, dst, path, make)


def with_external_link(src: Path, dst: Path, path: str, target: Path, values) -> Path:
    """The weight at path is a link to the dataset 'data' of another HDF5 file."""
    with h5py.File(target, "w") as other:
        other["data"] = values

    def make(f, name, shape, dtype):
        f[name] = h5py.ExternalLink(str(target), "/data")

    return replace_dataset(src, dst, path, make)


def with_unstored_weight(src: Path, dst: Path, path: str, declared_bytes: int) -> Path:
    """The weight at path declared as declared_bytes of its type, chunked, with no chunk ever written: a
    file of a few kB that makes a reader allocate all of it."""
    def make(f, name, shape, dtype):
        n = declared_bytes // dtype.itemsize
        f.create_dataset(name, (n,), dtype, chunks=(min(n, 2**20),))

    return replace_dataset(src, dst, path, make)


def with_weight_shape(src: Path, dst: Path, path: str, shape: tuple) -> Path:
    """The weight at path stored (in full) with another shape."""
    return replace_dataset(src, dst, path, lambda f, name, _shape, dtype: f.create_dataset(name, data=np.zeros(shape, dtype)))


def with_shared_text(src: Path, dst: Path, group: str, attr: str, length: int, count: int) -> Path:
    """A copy whose attribute group.attr is a list of count names, every one of them pointing at the same
    stored string of length bytes: the file grows by about 16 bytes a name, reading it by length bytes a name."""
    import struct

    from core.safety.hdf5_headers import HeaderReader

    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "a") as f:
        f[group].attrs[attr] = [b"w" * length] + [b"n%07d" % i for i in range(count - 1)]
    with h5py.File(dst, "r") as f, open(dst, "rb") as fh:
        reader = HeaderReader(fh, f.userblock_size, *f.id.get_create_plist().get_sizes(), dst.stat().st_size)
        first = reader.vlen_elements(h5py.h5o.get_info(f[group].id).addr, attr.encode(), count)[0]
    element = struct.pack("<I", first.length) + first.heap_object
    data = bytearray(dst.read_bytes())
    at = data.find(element)
    assert at >= 0 and data.find(element, at + 1) < 0, "the first element's bytes are not unique in the file"
    for i in range(1, count):
        data[at + i * len(element):at + (i + 1) * len(element)] = element
    dst.write_bytes(bytes(data))
    return dst
