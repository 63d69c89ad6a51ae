"""Where an estimate's figures come from, as the pages say it."""
from __future__ import annotations

from core.present.labels import estimate_details, estimate_source
from core.training.estimate import Estimate


def _estimate(observed_runs: int) -> Estimate:
    return Estimate(total_seconds=30.0, setup_seconds=5.0, feature_seconds=0.0, first_epoch_seconds=2.0,
                    epoch_seconds=1.0, train_images=160, val_images=40, epochs=3, observed_runs=observed_runs)


def test_an_estimate_says_whether_finished_runs_or_timed_batches_made_it():
    assert estimate_source(_estimate(0)).startswith("From a few batches timed on this server")
    assert estimate_source(_estimate(1)) == "From what 1 finished run of the same setting took on this server"
    assert estimate_source(_estimate(3)) == "From what 3 finished runs of the same setting took on this server"
    # Two models at once (the Quick demo): both learned, or one of each.
    assert estimate_source(_estimate(2), _estimate(1)) == "From what earlier runs of the same settings took on this server"
    assert estimate_source(_estimate(2), _estimate(0)).startswith("Partly from runs of the same setting")
    details = estimate_details(_estimate(2))
    assert details.startswith("160 training and 40 validation images; setup 5 s, 3 epochs")
    assert details.endswith("From what 2 finished runs of the same setting took on this server.")
