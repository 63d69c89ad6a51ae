"""The article's published figures, shipped with the Lab to draw beside users' own runs."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from core.settings.config import MOBILENET_V2_LABEL, MODEL_LABELS, ModelKind

_FILE = Path(__file__).with_name("article_reference.json")
_KEYS = {ModelKind.BASELINE: "baseline_cnn", ModelKind.TRANSFER: "mobilenet_v2_transfer"}
# The article's headline claims (its text), next to what its notebook printed at the last epoch.
HEADLINE_VAL_ACCURACY = {ModelKind.BASELINE: 0.88, ModelKind.TRANSFER: 0.98}
# The article's own models, whatever backbone a run of the Lab uses: its transfer model is MobileNetV2's.
ARTICLE_MODELS = {ModelKind.BASELINE: MODEL_LABELS[ModelKind.BASELINE], ModelKind.TRANSFER: MOBILENET_V2_LABEL}


def article_label(kind: ModelKind) -> str:
    """'Article: MobileNetV2 transfer': a reference drawn beside a run, named as the article's."""
    return f"Article: {ARTICLE_MODELS[kind]}"


def article_headline_label(kind: ModelKind) -> str:
    """'Article: MobileNetV2 98%': the article's reported accuracy, never this run's target."""
    short = "MobileNetV2" if kind is ModelKind.TRANSFER else ARTICLE_MODELS[kind]
    return f"Article: {short} {HEADLINE_VAL_ACCURACY[kind]:.0%}"


@lru_cache(maxsize=1)
def article() -> dict:
    return json.loads(_FILE.read_text())


def article_history(kind: ModelKind) -> list[dict]:
    """Per-epoch loss, accuracy, val_loss, val_accuracy and seconds as the article's notebook printed them."""
    return list(article()[_KEYS[kind]]["epochs"])


def article_params(kind: ModelKind) -> int:
    return int(article()[_KEYS[kind]]["total_params"])


def article_final_val_accuracy(kind: ModelKind) -> float:
    return float(article_history(kind)[-1]["val_accuracy"])
