"""The article's published figures, shipped with the Lab to draw beside users' own runs."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from core.settings.specs import ModelKind, spec

_FILE = Path(__file__).with_name("article_reference.json")


def article_label(kind: ModelKind) -> str:
    """'Article: MobileNetV2 transfer': a reference drawn beside a run, named as the article's."""
    return f"Article: {spec(kind).article_name}"


def article_headline_label(kind: ModelKind) -> str:
    """'Article: MobileNetV2 98%': the article's reported accuracy, never this run's target."""
    return f"Article: {spec(kind).article_short} {spec(kind).article_val_accuracy:.0%}"


@lru_cache(maxsize=1)
def article() -> dict:
    return json.loads(_FILE.read_text())


def article_history(kind: ModelKind) -> list[dict]:
    """Per-epoch loss, accuracy, val_loss, val_accuracy and seconds as the article's notebook printed them."""
    return list(article()[spec(kind).reference_key]["epochs"])


def article_params(kind: ModelKind) -> int:
    return int(article()[spec(kind).reference_key]["total_params"])


def article_final_val_accuracy(kind: ModelKind) -> float:
    return float(article_history(kind)[-1]["val_accuracy"])


def article_trainable_params(kind: ModelKind) -> int:
    """The parameters the article trained: all of the baseline's (its notebook prints only the total)."""
    entry = article()[spec(kind).reference_key]
    return int(entry.get("trainable_params", entry["total_params"]))
