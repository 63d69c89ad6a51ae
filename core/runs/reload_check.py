"""The article's last step, recorded for every run under RELOAD_CHECK_KEY in metrics.json: reload model.h5
the article's way and compare its predictions on one batch with the trained model's (0.0 in the article).
"""
from __future__ import annotations

import time
from pathlib import Path

RELOAD_CHECK_KEY = "reload_check"
RELOAD_CHECK_IMAGES = 32  # the article's batch size: it compares the predictions on one batch
# The line of code the check runs, as the article writes it; the pages show it beside the result.
RELOAD_CODE = 'tf_keras.models.load_model(path, custom_objects={"KerasLayer": hub.KerasLayer})'


def validation_batch(source, image_size: int, images: int = RELOAD_CHECK_IMAGES):
    """Up to `images` validation images, preprocessed as for training, in one float32 batch."""
    from core.data.sources import VALIDATION, preprocess

    ds = source.examples(VALIDATION, min_side=image_size).map(lambda x, _y: preprocess(x, image_size))
    for batch in ds.take(images).batch(images):
        return batch
    return None


def check_reload(model, model_path: str | Path, images) -> dict:
    """Reload model_path the article's way and compare its predictions with `model`'s on `images`.

    Returns {"max_abs_diff", "images", "reload_seconds", "file"}, max_abs_diff over all outputs. Models are
    called directly, skipping predict's tracing of a new function per model, except under a distribution
    strategy, where only model.predict runs them.
    """
    import numpy as np
    import tensorflow as tf

    from core.safety.model_files import load_model

    start = time.perf_counter()
    reloaded, _info = load_model(model_path)
    seconds = time.perf_counter() - start
    if model.distribute_strategy is tf.distribute.get_strategy():
        before, after = model(images, training=False), reloaded(images, training=False)
    else:
        before, after = model.predict(images, verbose=0), reloaded.predict(images, verbose=0)
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    return {"max_abs_diff": float(np.max(np.abs(before - after))), "images": int(before.shape[0]),
            "reload_seconds": round(seconds, 3), "file": Path(model_path).name}
