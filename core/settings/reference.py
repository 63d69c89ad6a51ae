"""The article's published figures, shipped with the Lab to draw beside users' own runs."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from core.settings.config import ModelKind

_FILE = Path(__file__).with_name("article_reference.json")
_KEYS = {ModelKind.BASELINE: "baseline_cnn", ModelKind.MOBILENET_V2: "mobilenet_v2_transfer"}
# The article's headline claims (its text), next to what its notebook printed at the last epoch.
HEADLINE_VAL_ACCURACY = {ModelKind.BASELINE: 0.88, ModelKind.MOBILENET_V2: 0.98}


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
