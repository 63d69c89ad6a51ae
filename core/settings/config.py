"""Experiment settings as frozen dataclasses; a run directory stores them as JSON to be repeated."""
from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass

from core.settings.source import Source
from core.settings.specs import MOBILENET_V2_LABEL, SPECS, ModelKind, spec

# The article's feature-vector module: MobileNetV2 trained on ImageNet, 1280 features, 224x224 input.
MOBILENET_V2_HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"
ARTICLE_DATASET = "cats_vs_dogs"
DEFAULT_SOURCE = str(Source.tfds(ARTICLE_DATASET))
# The most classes a dataset may have: a run's config.json lists every class name and the pages draw one
# bar, row and column per class, so the run schema refuses more, and the data sources refuse a dataset
# with more before anything is trained on it (ImageNet's 1,000 still fit).
MAX_CLASSES = 1000

# The article's settings (each model's epochs are in its spec; this view serves the data-efficiency pages).
ARTICLE_EPOCHS = {kind: s.article_epochs for kind, s in SPECS.items()}
ARTICLE_BATCH_SIZE = 32
ARTICLE_IMAGE_SIZE = 224
ARTICLE_LEARNING_RATE = 1e-3  # adam's default, which the article uses
# Four valid 3x3 convolutions, each followed by a 2x2 pool, leave at least one pixel from 46 up.
BASELINE_MIN_IMAGE_SIZE = 46
# Images per backbone call while extracting (and evaluating). Features do not depend on it; memory does,
# and larger calls were no faster on 2 cores (benchmarks/README.md), so the smallest peak wins.
EXTRACT_BATCH_SIZE = 8
# How the loss weighs each class: None, every image counts the same (the article); "balanced", each class's
# images weigh total / (classes x images of the class), so a small class counts as much as a large one.
CLASS_WEIGHT_CHOICES = ("balanced",)
# Where Google publishes MobileNetV2 feature vectors: TF Hub and its successor, Kaggle Models.
_MOBILENET_V2_PUBLISHERS = ("https://tfhub.dev/google/", "https://www.kaggle.com/models/google/",
                            "https://kaggle.com/models/google/")
KAGGLE_PREFIX = "https://www.kaggle.com/models/"
# owner/model/framework/variation[/version], as Kaggle Models writes it
_KAGGLE_HANDLE = re.compile(r"^[\w.-]+/[\w.-]+/[\w.-]+/[\w.-]+(/\d+)?$")


def is_kaggle_handle(handle: str) -> bool:
    """Whether handle is a bare Kaggle Models handle, which core.models.hub prefixes with KAGGLE_PREFIX."""
    return bool(_KAGGLE_HANDLE.match(handle)) and not handle.startswith((".", "/", "~"))


def is_mobilenet_v2_handle(handle: str | None) -> bool:
    """Whether a hub handle names Google's MobileNetV2 module (the article's, or another of its variants)."""
    h = (handle or "").strip().lower()
    if is_kaggle_handle(h):
        h = KAGGLE_PREFIX + h
    return h.startswith(_MOBILENET_V2_PUBLISHERS) and ("mobilenet_v2" in h or "mobilenet-v2" in h)


_PLAIN_LABEL = re.compile(r"[\w ().,:'-]+")
_GENERIC_HANDLE_PARTS = {"feature_vector", "feature-vector", "tensorflow2", "tf2", "saved_model", "classification"}


def short_handle(handle: str, limit: int = 40) -> str:
    """The last meaningful part of a handle: a folder's name, a URL's model name."""
    parts = [p for p in (handle or "").replace("\\", "/").split("/")
             if p and not p.isdigit() and p.lower() not in _GENERIC_HANDLE_PARTS]
    # A handle read from a run folder is outside data: only plain name characters reach a label.
    name = re.sub(r"[^\w.-]", "_", parts[-1]) if parts else "?"
    return name if len(name) <= limit else name[:limit - 1] + "…"


def plain_label(text) -> str | None:
    """A model name read from a file, if it is plain words (letters, digits, spaces, ().,:'_-), else None."""
    if not isinstance(text, str) or not text.strip() or len(text) > 100 or not _PLAIN_LABEL.fullmatch(text):
        return None
    return text.strip()


def model_label(kind: ModelKind, handle: str | None = None, backbone_name: str | None = None) -> str:
    """A model's name everywhere (charts, tables, Predict, exports, the CLI): a transfer model's after its backbone.

    backbone_name is what a local backbone calls itself (core.models.demo_backbone.backbone_name), e.g.
    the offline demo's. "MobileNetV2 transfer" only for Google's MobileNetV2 module; any other handle is
    "Transfer (<its short name>)"; without a handle, the spec's label.
    """
    if not spec(kind).has_backbone:
        return spec(kind).label
    if backbone_name:
        return f"{backbone_name} transfer"
    if is_mobilenet_v2_handle(handle):
        return MOBILENET_V2_LABEL
    return f"Transfer ({short_handle(handle)})" if handle else spec(kind).label


@dataclass(frozen=True)
class DataConfig:
    source: str = DEFAULT_SOURCE  # "tfds:NAME" or "folder:PATH"
    image_size: int = ARTICLE_IMAGE_SIZE  # square side the images are resized to
    batch_size: int = ARTICLE_BATCH_SIZE
    limit: int | None = None  # training images to use (validation cut in the same 80/20 proportion)
    val_fraction: float = 0.2  # the article's 80/20 split, used when a source has no validation split
    seed: int = 42  # fixes the split, the shuffle order and the weight initialisation
    augment: bool = False  # random flip/rotation/zoom of training images only; off to match the article


@dataclass(frozen=True)
class TrainConfig:
    model: ModelKind = ModelKind.TRANSFER
    epochs: int | None = None  # None: the article's epochs for this model
    learning_rate: float = ARTICLE_LEARNING_RATE
    handle: str = MOBILENET_V2_HANDLE  # hub URL, Kaggle handle or local SavedModel folder
    cache_features: bool = True  # frozen backbone: compute its features once and train the head on them
    fine_tune_epochs: int = 0  # transfer model: epochs after the frozen phase with the backbone unfrozen
    fine_tune_learning_rate: float = 1e-5  # small, so the pretrained features are adjusted, not overwritten
    strategy: str = "auto"  # tf.distribute: auto, default, mirrored, tpu or multiworker (distribute.choose_strategy)
    mixed_precision: bool = False  # float16 compute on GPUs; ignored, and recorded as unused, elsewhere
    class_weight: str | None = None  # "balanced" for imbalanced folders (CLASS_WEIGHT_CHOICES); None: the article's

    @property
    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else spec(self.model).article_epochs


def validate(data: DataConfig, train: TrainConfig) -> None:
    """Refuse settings that cannot work, with a message that says what to change."""
    from core.settings.errors import LabError

    if train.resolved_epochs < 1:
        raise LabError(f"Epochs must be at least 1 (got {train.resolved_epochs}).")
    if data.batch_size < 1:
        raise LabError(f"Batch size must be at least 1 (got {data.batch_size}).")
    if data.limit is not None and data.limit < 2:
        raise LabError(f"The training-image limit must be at least 2 (got {data.limit}); leave it empty for all.")
    if not 16 <= data.image_size <= 1024:
        raise LabError(f"Image size must be between 16 and 1024 pixels (got {data.image_size}).")
    if not 0 < train.learning_rate < 1:
        raise LabError(f"Learning rate must be between 0 and 1 (got {train.learning_rate}).")
    if not spec(train.model).has_backbone and data.image_size < BASELINE_MIN_IMAGE_SIZE:
        raise LabError(f"The baseline CNN needs images of at least {BASELINE_MIN_IMAGE_SIZE}x{BASELINE_MIN_IMAGE_SIZE} "
                       f"(four 3x3 conv + 2x2 pool stages; got {data.image_size}).")
    if train.fine_tune_epochs < 0:
        raise LabError(f"Fine-tuning epochs must be 0 (off) or more (got {train.fine_tune_epochs}).")
    if train.fine_tune_epochs and not spec(train.model).has_backbone:
        raise LabError("Fine-tuning unfreezes a pretrained backbone; the baseline CNN has none (it trains "
                       "every layer already). Set fine-tuning epochs to 0 for it.")
    if train.class_weight is not None and train.class_weight not in CLASS_WEIGHT_CHOICES:
        raise LabError(f"Class weight must be one of {', '.join(CLASS_WEIGHT_CHOICES)} or none "
                       f"(got '{train.class_weight}').")
    if train.fine_tune_epochs and not 0 < train.fine_tune_learning_rate < 1:
        raise LabError(f"Fine-tuning learning rate must be between 0 and 1 (got {train.fine_tune_learning_rate}).")


def balanced_class_weights(counts: dict[str, int], class_names: list[str]) -> dict[str, float]:
    """sklearn's "balanced" weights: images / (classes x images of the class); 1.0 for a class with none."""
    total = sum(counts.get(name, 0) for name in class_names)
    return {name: (total / (len(class_names) * counts[name]) if counts.get(name) else 1.0) for name in class_names}


def uses_feature_cache(data: DataConfig, train: TrainConfig) -> bool:
    """Backbone features can be computed once only when the backbone is frozen and every epoch sees the
    same pixels: augmentation changes the images, hence the features, every epoch."""
    return spec(train.model).has_backbone and train.cache_features and not data.augment


def total_epochs(train: TrainConfig) -> int:
    return train.resolved_epochs + (train.fine_tune_epochs if spec(train.model).has_backbone else 0)


def to_dict(obj) -> dict:
    out = dataclasses.asdict(obj)
    return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in out.items()}


def train_from_dict(d: dict) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in d.items() if k in fields}
    kw["model"] = ModelKind(kw.get("model", ModelKind.TRANSFER.value))
    return TrainConfig(**kw)


def data_from_dict(d: dict) -> DataConfig:
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{k: v for k, v in d.items() if k in fields})
