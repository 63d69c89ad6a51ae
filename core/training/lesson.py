"""The article's lesson measured on any dataset: final validation accuracy of both models, seed by seed.

Each seed fixes the 80/20 split, the shuffling and the weight initialisation (DataConfig.seed). The
settings are the article's, which the Quick demo keeps for the generated demo whenever its budget allows
them (600 images at 64 pixels train in well under its default 3 minutes): every image, 15 and 3 epochs,
batches of 32, learning rate 0.001.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.settings.config import ARTICLE_BATCH_SIZE, ARTICLE_LEARNING_RATE, DataConfig, ModelKind, TrainConfig

DEMO_IMAGE_SIZE = 64  # small images: the baseline's 15 epochs take seconds, not minutes


@dataclass(frozen=True)
class SeedResult:
    seed: int
    baseline: float  # final validation accuracy
    transfer: float

    @property
    def gap(self) -> float:
        return self.transfer - self.baseline


def median_gap(results: Sequence[SeedResult]) -> float:
    return statistics.median(r.gap for r in results)


def compare_models(source: str, handle: str, seeds: Sequence[int] = (0, 1, 2), image_size: int = DEMO_IMAGE_SIZE,
                   epochs: dict[ModelKind, int] | None = None,
                   on_status: Callable[[str], None] | None = None) -> list[SeedResult]:
    """Train the baseline and the frozen-backbone transfer model once per seed; their final val accuracies."""
    from core.data.sources import open_source
    from core.settings.paths import configure_caches
    from core.training.experiment import fit

    configure_caches()
    results = []
    for seed in seeds:
        data = DataConfig(source=source, image_size=image_size, batch_size=ARTICLE_BATCH_SIZE, seed=seed)
        opened = open_source(data)
        final = {}
        for kind in (ModelKind.BASELINE, ModelKind.TRANSFER):
            if on_status:
                on_status(f"seed {seed}: training the {kind.value} model ...")
            train = TrainConfig(model=kind, epochs=(epochs or {}).get(kind), learning_rate=ARTICLE_LEARNING_RATE,
                                handle=handle)
            final[kind] = float(fit(opened, data, train).final["val_accuracy"])
        results.append(SeedResult(seed, final[ModelKind.BASELINE], final[ModelKind.TRANSFER]))
    return results
