"""The offline demo: a backbone really pretrained on other shapes, and a target task with the article's shape."""
import json
import os
import textwrap
import time

import numpy as np
import pytest
from lab_helpers import saved_functions

from core.data.scenes import SOURCE_SHAPES, TARGET_SHAPES
from core.models.demo_backbone import (
    BACKBONE_NAME,
    INFO_FILE,
    PretrainReport,
    backbone_name,
    ensure_backbone,
    pretrain_in_child,
)
from core.settings.config import ModelKind, TrainConfig
from core.settings.errors import LabError
from core.settings.processes import pid_alive
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


# The child pretrain_in_child starts, standing in for the two minutes of pretraining: it reports, then
# finishes, fails or hangs as STAND_IN asks.
STAND_IN_CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from core.data.demo import reporting
    from core.models.demo_backbone import INFO_FILE
    folder, status = Path(sys.argv[1]), Path(sys.argv[2])
    (folder.parent / "child.pid").write_text(str(os.getpid()))
    reporting(status)(0.5, "Stand-in pretraining: halfway")
    if os.environ["STAND_IN"] == "fail":
        sys.exit("ValueError: the stand-in broke")
    time.sleep(60 if os.environ["STAND_IN"] == "hang" else 0.8)
    folder.mkdir(exist_ok=True)
    (folder / INFO_FILE).write_text(json.dumps({"name": "stand-in", "seconds": 1.5, "cpu_seconds": 0.5,
        "source_classes": 20, "source_images": 40, "source_accuracy": 0.9, "features": 8}))
""")


@pytest.fixture
def stand_in_child(tmp_path, monkeypatch):
    (tmp_path / "stand_in_child.py").write_text(STAND_IN_CHILD)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # beside the repository, which launch_module puts first
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache" / ".backbone-v1.tmp-x"


def test_pretraining_in_a_process_of_its_own_passes_its_progress_on_and_tidies_up(stand_in_child, monkeypatch):
    monkeypatch.setenv("STAND_IN", "finish")
    seen = []
    report = pretrain_in_child(stand_in_child, lambda *news: seen.append(news), module="stand_in_child")
    assert report == PretrainReport(1.5, 0.5, 20, 40, 0.9, 8)
    assert seen == [(0.5, "Stand-in pretraining: halfway")]
    assert sorted(p.name for p in stand_in_child.parent.iterdir()) == [".backbone-v1.tmp-x", "child.pid"]


def test_a_failed_pretraining_process_says_why_in_one_line(stand_in_child, monkeypatch):
    monkeypatch.setenv("STAND_IN", "fail")
    with pytest.raises(LabError, match=r"Pretraining the demo backbone failed \(ValueError: the stand-in broke\)"):
        pretrain_in_child(stand_in_child, module="stand_in_child")


class Rerun(Exception):
    """What Streamlit raises in a page's thread when its visitor reruns or leaves."""


def test_a_caller_stopped_while_it_follows_stops_the_pretraining_process(stand_in_child, monkeypatch):
    monkeypatch.setenv("STAND_IN", "hang")

    def progress(fraction, message):
        raise Rerun

    began = time.monotonic()
    with pytest.raises(Rerun):
        pretrain_in_child(stand_in_child, progress, module="stand_in_child")
    assert time.monotonic() - began < 30  # not the child's 60 s
    pid = int((stand_in_child.parent / "child.pid").read_text())
    assert not pid_alive(pid)
    assert not os.path.exists(stand_in_child.parent / f".{stand_in_child.name}.progress.json")
