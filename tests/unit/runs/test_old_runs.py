"""Run folders saved before the transfer model's member was named TRANSFER still open as the transfer model.

The stored value stays "mobilenet_v2": run folders, run zips and the CLI's --model flag all carry it.
"""
from __future__ import annotations

import json

import h5py

from core.runs.folders import list_runs, open_run, preferred_run_index
from core.settings.config import MOBILENET_V2_HANDLE, ModelKind, model_label, train_from_dict

# config.json as the Lab wrote it before the rename (trimmed to what the pages read).
OLD_CONFIG = {
    "class_names": ["cats", "dogs"],
    "data": {"source": "tfds:cats_vs_dogs", "image_size": 224, "batch_size": 32, "seed": 42, "val_fraction": 0.2},
    "train": {"model": "mobilenet_v2", "handle": None, "epochs": 2, "learning_rate": 0.001},
    "epochs": 2,
}


def _old_run(runs_dir, run_id="20240101-120000-mobilenet_v2"):
    folder = runs_dir / run_id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(OLD_CONFIG))
    row = {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.4, "val_accuracy": 0.85, "seconds": 1.0}
    (folder / "history.json").write_text(json.dumps([row, row]))
    (folder / "metrics.json").write_text(json.dumps({"final_val_accuracy": 0.85, "finished_at": 1_704_110_400}))
    with h5py.File(folder / "model.h5", "w") as f:
        f.attrs["keras_version"] = "2.15.0"
    return folder


def test_a_run_saved_before_the_rename_opens_as_the_transfer_model(tmp_path):
    record = open_run(_old_run(tmp_path))
    assert ModelKind(record.model_kind) is ModelKind.TRANSFER
    assert train_from_dict(record.config["train"]).model is ModelKind.TRANSFER
    assert record.model_name == model_label(ModelKind.TRANSFER, None)
    assert ModelKind.TRANSFER.value == "mobilenet_v2" and MOBILENET_V2_HANDLE


def test_an_old_transfer_run_is_still_offered_first(tmp_path):
    _old_run(tmp_path)
    runs = list_runs(tmp_path).runs
    assert [r.run_id for r in runs] == ["20240101-120000-mobilenet_v2"]
    assert preferred_run_index(runs, "tfds:cats_vs_dogs") == 0
