"""One record per model: what the Lab knows about each kind, in one place (MediaPipe Model Maker's model_spec).

core.models.architectures builds a model from its spec: a hub backbone under a new head, or the baseline CNN.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class ModelKind(str, enum.Enum):
    BASELINE = "baseline"
    # The stored value predates the member's name: run folders, run zips and the CLI's --model carry it.
    TRANSFER = "mobilenet_v2"


@dataclass(frozen=True)
class ModelSpec:
    kind: ModelKind
    label: str  # its name before its backbone is known (a settings column, a run in progress)
    colour: str  # every chart draws the model in it, so "the orange line" means one model everywhere
    key: str  # its letter in the Experiments page's field keys
    has_backbone: bool  # a hub backbone under a new head: a handle, cached features, fine-tuning
    article_epochs: int  # the article's settings for it
    article_name: str  # the article's model, whatever backbone a run of the Lab uses
    article_short: str  # the same in a headline label
    article_val_accuracy: float  # the article's headline claim (its text)
    reference_key: str  # its entry in article_reference.json


MOBILENET_V2_LABEL = "MobileNetV2 transfer"

SPECS = {
    ModelKind.BASELINE: ModelSpec(
        ModelKind.BASELINE, label="Baseline CNN", colour="#E8731A", key="b", has_backbone=False,
        article_epochs=15, article_name="Baseline CNN", article_short="Baseline CNN", article_val_accuracy=0.88,
        reference_key="baseline_cnn"),
    ModelKind.TRANSFER: ModelSpec(
        ModelKind.TRANSFER, label="Transfer model", colour="#1F6FB2", key="t", has_backbone=True,
        article_epochs=3, article_name=MOBILENET_V2_LABEL, article_short="MobileNetV2", article_val_accuracy=0.98,
        reference_key="mobilenet_v2_transfer"),
}


def spec(kind: ModelKind | str) -> ModelSpec:
    """The spec of a kind, given as the member or its stored value."""
    return SPECS[ModelKind(kind)]
