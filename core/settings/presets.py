"""Deployment presets: what a local workshop machine allows versus a small shared host.

`LAB_PRESET=cloud` (chosen automatically on Streamlit Community Cloud, whose apps run from /mount/src)
keeps a training run's memory under that host's 2.7 GB and stops strangers from pointing the server at
its own files. All of a Streamlit server's sessions share one process, so the cloud preset also trains one
run at a time (core.training.jobs enforces max_concurrent_jobs). Its caps keep the worst case ("Run both")
under the host's memory beside the sessions and Predict's cached models, as measured with
`python -m benchmarks.preset_memory` (benchmarks/README.md).
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from core.settings.config import (
    ARTICLE_BATCH_SIZE,
    ARTICLE_LEARNING_RATE,
    DataConfig,
    ModelKind,
    TrainConfig,
)
from core.settings.errors import LabError
from core.settings.source import Source
from core.settings.specs import spec

logger = logging.getLogger(__name__)

CLOUD_MOUNT = Path("/mount/src")  # where Streamlit Community Cloud checks out an app's repository


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    max_train_images: int | None  # cap on the training-image limit; None: the whole dataset
    max_batch_size: int | None  # activations grow with it; None: no cap
    max_image_size: int | None  # activations and cached images grow with its square; None: no cap
    allow_local_paths: bool  # may the web page name server-side folders and model files?
    max_concurrent_jobs: int  # training jobs at once across all sessions (core.training.jobs enforces it)
    allow_fine_tuning: bool  # gradients through the whole backbone need far more memory than the head
    max_jobs_per_session: int  # queued or running trainings one visitor may hold (core.training.board enforces it)
    # Caps below default to none, so a preset names only those it sets.
    max_epochs: int | None = None  # per training, and per fine-tuning phase (apply_preset)
    max_job_minutes: float | None = None  # the longest a training may be by its estimate (check_job_length)
    # Data efficiency keeps every training image it uses in memory, as float32 arrays (core.training.efficiency),
    # so it needs its own, lower image-size cap and a cap on its images (largest count x classes).
    max_efficiency_image_size: int | None = None
    max_efficiency_images: int | None = None


# One training at a time on the cloud preset, so every visitor in the queue waits out each job ahead of them:
# its length is what the caps below bound. The article's longest training is the baseline's 15 epochs;
# 20 leaves room to watch it overfit, not for a 500-epoch job that held the queue for most of an hour.
CLOUD_MAX_EPOCHS = 20
# By the page's own estimate: a visitor behind one job waits at most this long for it, and the Quick demo
# (a 3-minute budget by default) and the article's transfer run fit well inside it.
CLOUD_MAX_JOB_MINUTES = 10
CLOUD_EFFICIENCY_IMAGE_SIZE = 128
CLOUD_EFFICIENCY_IMAGES = 1000

PRESETS = {
    "local": Preset("local", "Your own machine: every dataset size, local folders and model paths allowed.",
                    None, None, None, True, 4, True, max_jobs_per_session=4),
    "cloud": Preset("cloud", "Shared host (Streamlit Community Cloud, 2.7 GB of memory): at most 2,000 training "
                    "images at up to 224x224 in batches of up to 16, one training run at a time (of at most "
                    f"{CLOUD_MAX_EPOCHS} epochs and {CLOUD_MAX_JOB_MINUTES} minutes), no fine-tuning, datasets "
                    "from uploads, the generated demo or TFDS.", 2000, 16, 224, False, 1,
                    False, max_jobs_per_session=1, max_epochs=CLOUD_MAX_EPOCHS,
                    max_job_minutes=CLOUD_MAX_JOB_MINUTES, max_efficiency_image_size=CLOUD_EFFICIENCY_IMAGE_SIZE,
                    max_efficiency_images=CLOUD_EFFICIENCY_IMAGES),
}
DEFAULT_PRESET = "local"


@dataclass(frozen=True)
class ActivePreset:
    preset: Preset
    reason: str  # how it was chosen, for the Home page


@functools.lru_cache(maxsize=8)
def _warn_unknown(name: str) -> None:
    """Once per name: pages ask for the preset on every rerun."""
    logger.warning("LAB_PRESET=%s is not one of %s; using the cloud preset", name, ", ".join(PRESETS))


def active() -> ActivePreset:
    """The preset in force: $LAB_PRESET, else "cloud" under /mount/src, else "local".

    An unknown LAB_PRESET gets the stricter "cloud" preset: a typo on a public server must not lift its limits.
    """
    name = os.environ.get("LAB_PRESET", "").strip().lower()
    if name:
        if name in PRESETS:
            return ActivePreset(PRESETS[name], f"LAB_PRESET={name}")
        _warn_unknown(name)
        return ActivePreset(PRESETS["cloud"], f"LAB_PRESET={name} is unknown ({', '.join(PRESETS)}), so the "
                                              "stricter cloud preset is used")
    here = (Path.cwd(), Path(__file__).resolve())
    if any(path.is_relative_to(CLOUD_MOUNT) for path in here):
        return ActivePreset(PRESETS["cloud"], f"the app runs from {CLOUD_MOUNT} (Streamlit Community Cloud)")
    return ActivePreset(PRESETS[DEFAULT_PRESET], "the default; set LAB_PRESET=cloud on a shared host")


def active_preset() -> Preset:
    return active().preset


def capped_batch_size(batch_size: int, preset: Preset | None = None) -> int:
    """batch_size, or the preset's cap if that is lower: what a page should offer by default."""
    cap = (preset or active_preset()).max_batch_size
    return batch_size if cap is None else min(batch_size, cap)


def check_source(source: str, preset: Preset | None = None) -> None:
    """Raise LabError if the preset may not open this data source: a visitor's own choice, or one that a
    run imported from elsewhere names (evaluating it reopens its source). Without local paths only the
    cache folder's (uploads, the demo) may be named."""
    from core.settings.paths import cache_dir, resolves_inside, written_inside

    preset = preset or active_preset()
    parsed = Source.parse(source)
    lab = [cache_dir()]
    if not preset.allow_local_paths and parsed.is_folder and not (
            written_inside(parsed.value, lab) and resolves_inside(parsed.value, lab)):
        raise LabError(f"The {preset.name} preset does not read folders on the server; upload a zip of class "
                       "folders on the Dataset page, or use the generated demo or a TFDS dataset.")


def apply_preset(data: DataConfig, train: TrainConfig | None = None, preset: Preset | None = None) -> DataConfig:
    """The data settings a run may use under the preset: "all images" becomes the preset's cap; anything
    over a limit raises LabError saying what to change. train, when given, is checked too.
    """
    preset = preset or active_preset()
    cap = preset.max_train_images
    if cap is not None:
        if data.limit is None:
            data = replace(data, limit=cap)
        elif data.limit > cap:
            raise LabError(f"The {preset.name} preset trains on at most {cap:,} images (asked for {data.limit:,}); "
                           f"set the training-image limit to {cap:,} or fewer.")
    if preset.max_batch_size is not None and data.batch_size > preset.max_batch_size:
        raise LabError(f"The {preset.name} preset allows batches of at most {preset.max_batch_size} (asked for "
                       f"{data.batch_size}); lower the batch size.")
    if preset.max_image_size is not None and data.image_size > preset.max_image_size:
        raise LabError(f"The {preset.name} preset allows images of at most {preset.max_image_size}x"
                       f"{preset.max_image_size} (asked for {data.image_size}); lower the image size.")
    check_source(data.source, preset)
    if train is not None:
        check_epochs(train.resolved_epochs, preset)
        if train.fine_tune_epochs and not preset.allow_fine_tuning:
            raise LabError(f"The {preset.name} preset does not fine-tune: training the whole backbone needs more "
                           "memory than this host has. Set fine-tuning epochs to 0.")
        check_epochs(train.fine_tune_epochs, preset, "fine-tuning epochs")
    return data


def check_epochs(epochs: int, preset: Preset | None = None, what: str = "epochs") -> None:
    """Raise LabError when epochs is over the preset's max_epochs (a fine-tuning phase has the same cap)."""
    preset = preset or active_preset()
    if preset.max_epochs is not None and epochs > preset.max_epochs:
        raise LabError(f"The {preset.name} preset trains at most {preset.max_epochs} {what} (asked for {epochs}); "
                       f"lower the {what}.")


def check_job_length(estimated_seconds: float, preset: Preset | None = None) -> None:
    """Raise LabError when a training's estimated length is over the preset's max_job_minutes.

    For the page that submits a training, with its estimate: on a host that trains one job at a time, the
    visitors queued behind a job wait out all of it. A length that could not be estimated is refused too.
    """
    import math

    preset = preset or active_preset()
    cap = preset.max_job_minutes
    if cap is None:
        return
    advice = f"the hosted Lab runs trainings of at most {cap:g} min: use fewer images or epochs."
    try:
        seconds = float(estimated_seconds)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds):
        raise LabError(f"This training's length could not be estimated; {advice}")
    if seconds > cap * 60:
        raise LabError(f"This training would take about {math.ceil(seconds / 60)} min; {advice}")


def apply_efficiency_preset(data: DataConfig, epochs: Iterable[int], preset: Preset | None = None) -> DataConfig:
    """Data efficiency's settings under the preset, like apply_preset's for a run: its data source, batch and
    image size, every training's epochs, and its own lower image-size cap; LabError says what to change.

    The images it holds depend on the dataset's classes: check_efficiency_images, once they are known.
    """
    preset = preset or active_preset()
    cap = preset.max_efficiency_image_size
    if cap is not None and data.image_size > cap:
        raise LabError(f"The {preset.name} preset measures data efficiency on images of at most {cap}x{cap} (asked "
                       f"for {data.image_size}); lower the image size.")
    data = apply_preset(data, preset=preset)
    for count in epochs:
        check_epochs(count, preset)
    return data


def check_efficiency_images(per_class: int, classes: int, preset: Preset | None = None) -> None:
    """Raise LabError when Data efficiency would hold more training images than the preset allows: its
    largest count of images per class, for every class."""
    preset = preset or active_preset()
    cap = preset.max_efficiency_images
    if cap is not None and per_class * classes > cap:
        raise LabError(f"The {preset.name} preset measures data efficiency on at most {cap:,} training images "
                       f"(asked for {per_class:,} per class of {classes:,} classes: {per_class * classes:,}); use "
                       "smaller counts.")


def article_settings(kind: ModelKind, preset: Preset | None = None) -> dict:
    """The article's settings for one model, as the Experiments page's fields hold them.

    The article neither augments nor fine-tunes; its batch of 32 is lowered to the preset's cap where a
    small shared host needs that for memory. limit 0 means every image.
    """
    settings = {"epochs": spec(kind).article_epochs, "batch": capped_batch_size(ARTICLE_BATCH_SIZE, preset),
                "lr": ARTICLE_LEARNING_RATE, "limit": 0, "augment": False, "balance": False}
    if spec(kind).has_backbone:
        settings |= {"ft_epochs": 0, "ft_lr": TrainConfig.fine_tune_learning_rate}
    return settings


ARTICLE_SETTINGS_NOTE = ("Article settings: 15 and 3 epochs on every image, batches of 32, 224x224, learning rate "
                         "0.001, no augmentation or fine-tuning.")
