"""The offline demo: a backbone really pretrained on other shapes, and a target task with the article's shape."""
import json

import numpy as np
from lab_helpers import saved_functions

from core.data.scenes import SOURCE_SHAPES, TARGET_SHAPES
from core.models.demo_backbone import BACKBONE_NAME, INFO_FILE, backbone_name, ensure_backbone
from core.settings.config import ModelKind, TrainConfig
from core.training.experiment import run_model_label
from core.training.lesson import compare_models, median_gap


def test_the_source_task_shares_no_class_with_the_demo():
    assert len(SOURCE_SHAPES) >= 20
    assert not set(SOURCE_SHAPES) & set(TARGET_SHAPES)


def test_the_pretrained_backbone_loads_like_a_hub_module_and_names_itself(pretrained_demo):
    from core.models.architectures import build_transfer, param_counts

    info = json.loads((pretrained_demo.backbone / INFO_FILE).read_text())
    assert info["name"] == BACKBONE_NAME and info["source_shapes"] == sorted(SOURCE_SHAPES)
    assert info["source_accuracy"] > 0.5  # it learned its 20-way source task (chance: 5%)
    model = build_transfer(3, 64, str(pretrained_demo.backbone))
    total, trainable = param_counts(model)
    assert trainable == info["features"] * 3 + 3  # only the Dense head trains
    assert total > 100_000  # the backbone's weights are counted, frozen
    images = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    assert model.predict(images, verbose=0).shape == (2, 3)
    assert backbone_name(str(pretrained_demo.backbone)) == BACKBONE_NAME
    assert run_model_label(TrainConfig(model=ModelKind.TRANSFER, handle=str(pretrained_demo.backbone))) == \
        f"{BACKBONE_NAME} transfer"


def test_the_backbone_is_saved_as_a_published_module_is(pretrained_demo):
    """Only __call__ and the variables: with the Keras model it was trained as, every layer's functions
    would be saved too (67 of them), and loading it would take 0.6 s instead of 0.08."""
    assert saved_functions(pretrained_demo.backbone) <= 2


def test_the_backbone_is_cached_and_reused(pretrained_demo):
    messages = []
    folder, report = ensure_backbone(progress=lambda fraction, message: messages.append((fraction, message)))
    assert folder == pretrained_demo.backbone and report is None
    assert messages == [(1.0, "Demo backbone already pretrained (cached).")]


def test_transfer_beats_the_baseline_by_ten_points_on_three_seeds(pretrained_demo):
    """The article's lesson in miniature, at the Quick demo's settings (every image, 15 and 3 epochs,
    batches of 32, learning rate 0.001) on 64-pixel images."""
    results = compare_models(pretrained_demo.source, str(pretrained_demo.backbone), seeds=(0, 1, 2))
    for r in results:
        assert r.baseline < 1.0, r  # the task is not solved from a few hundred images alone
        assert r.transfer >= 0.9, r
        assert r.gap >= 0.10, r
    assert median_gap(results) >= 0.10
