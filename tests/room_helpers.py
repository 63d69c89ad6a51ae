"""Saved runs made by hand for the room's tests: the files a run folder holds, without training."""
from __future__ import annotations

import json
import time
from pathlib import Path

import h5py


def fake_run(runs_dir: Path, run_id: str, model: str = "baseline", accuracy: float = 0.875,
             classes: tuple[str, ...] = ("circles", "squares"), source: str = "folder:/data/shapes",
             per_class: int = 60, seconds: float = 12.0, finished_at: float | None = None) -> Path:
    """A complete run folder as the Lab writes one (its model.h5 an empty HDF5 file: listed, never loaded)."""
    folder = Path(runs_dir) / run_id
    folder.mkdir(parents=True)
    train = {"model": model, "epochs": 2}
    if model != "baseline":
        train["handle"] = "/models/backbone"
    val = per_class // 5
    config = {"class_names": list(classes), "data": {"source": source, "image_size": 64}, "train": train,
              "dataset": {"counts": {"train": {c: per_class - val for c in classes},
                                     "validation": {c: val for c in classes}}}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "history.json").write_text(json.dumps([{"loss": 0.5, "accuracy": accuracy, "val_loss": 0.5,
                                                      "val_accuracy": accuracy, "seconds": seconds}]))
    (folder / "metrics.json").write_text(json.dumps({
        "final_val_accuracy": accuracy, "train_seconds": seconds, "feature_seconds": 0.0,
        "finished_at": time.time() if finished_at is None else finished_at, "epochs_completed": 1}))
    with h5py.File(folder / "model.h5", "w") as fh:
        fh.attrs["made_by"] = "a test"
    return folder
