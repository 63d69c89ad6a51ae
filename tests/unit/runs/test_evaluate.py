"""Evaluation: metrics of a known labelling, stored evaluations of real runs, the mistakes gallery, the CLI."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.present.tables import format_report
from core.runs.evaluate import (
    EVALUATION_FILE,
    THUMBNAIL_SIDE,
    confusion_matrix,
    evaluate_run,
    load_evaluation,
    macro_averages,
    overall_accuracy,
    per_class_metrics,
    row_percentages,
)
from core.settings.errors import LabError
from core.settings.source import Source
from tests.conftest import TEST_IMAGE_SIZE

# A three-class labelling worked out by hand.
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 1, 0, 1, 1, 2, 0, 2, 2]
MATRIX = [[2, 1, 0], [0, 2, 0], [1, 0, 3]]
NAMES = ["cat", "dog", "fox"]


def test_confusion_matrix_of_a_known_labelling():
    matrix = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert matrix.tolist() == MATRIX
    np.testing.assert_allclose(row_percentages(matrix), [[200 / 3, 100 / 3, 0], [0, 100, 0], [25, 0, 75]])
    assert overall_accuracy(matrix) == pytest.approx(7 / 9)


def test_per_class_precision_recall_and_one_vs_rest_accuracy():
    metrics = {m.name: m for m in per_class_metrics(confusion_matrix(Y_TRUE, Y_PRED, 3), NAMES)}
    assert metrics["cat"].precision == pytest.approx(2 / 3)
    assert metrics["cat"].recall == pytest.approx(2 / 3)
    assert metrics["cat"].accuracy == pytest.approx(7 / 9)
    assert metrics["dog"].precision == pytest.approx(2 / 3)
    assert metrics["dog"].recall == pytest.approx(1.0)
    assert metrics["dog"].accuracy == pytest.approx(8 / 9)
    assert metrics["fox"].precision == pytest.approx(1.0)
    assert metrics["fox"].recall == pytest.approx(0.75)
    assert metrics["fox"].accuracy == pytest.approx(8 / 9)
    assert [(m.support, m.predicted) for m in metrics.values()] == [(3, 3), (2, 3), (4, 3)]


def test_ratios_with_nothing_to_divide_by_are_undefined_not_zero():
    # class 2 has no images and is never predicted; class 1 is never predicted
    matrix = confusion_matrix([0, 0, 1], [0, 0, 0], 3)
    metrics = per_class_metrics(matrix, NAMES)
    assert metrics[1].precision is None and metrics[1].recall == 0.0
    assert metrics[2].precision is None and metrics[2].recall is None
    assert metrics[2].accuracy == 1.0  # "is it a fox?" was answered "no", rightly, every time
    assert np.isnan(row_percentages(matrix)[2]).all()


def test_f1_per_class_and_macro_averages_of_a_known_labelling():
    metrics = per_class_metrics(confusion_matrix(Y_TRUE, Y_PRED, 3), NAMES)
    assert [m.f1 for m in metrics] == pytest.approx([2 / 3, 0.8, 6 / 7])  # 2PR / (P + R) per class
    macro = macro_averages(metrics)
    assert macro.precision == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert macro.recall == pytest.approx((2 / 3 + 1 + 0.75) / 3)
    assert macro.f1 == pytest.approx((2 / 3 + 0.8 + 6 / 7) / 3)


def test_macro_averages_count_undefined_figures_as_zero_and_skip_absent_classes():
    # As sklearn's average="macro", zero_division=0: class 1 (never predicted) counts 0, class 2 (no images,
    # never predicted) is left out.
    metrics = per_class_metrics(confusion_matrix([0, 0, 1], [0, 0, 0], 3), NAMES)
    assert [m.f1 for m in metrics] == [pytest.approx(0.8), 0.0, None]
    assert tuple(macro_averages(metrics)) == pytest.approx((1 / 3, 0.5, 0.4))


def test_an_evaluation_stored_before_f1_was_recorded_gets_it_on_loading(tmp_path):
    per_class = [vars(m) for m in per_class_metrics(confusion_matrix(Y_TRUE, Y_PRED, 3), NAMES)]
    for m in per_class:
        del m["f1"]
    stored = {"class_names": NAMES, "matrix": MATRIX, "row_percentages": [[0.0] * 3] * 3, "per_class": per_class,
              "accuracy": 7 / 9, "images": 9, "wrong": []}
    (tmp_path / EVALUATION_FILE).write_text(json.dumps(stored))
    assert [m.f1 for m in load_evaluation(tmp_path).per_class] == pytest.approx([2 / 3, 0.8, 6 / 7])


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match="lie in"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix([0, 1], [0], 3)


@pytest.fixture(scope="module")
def run_copies(trained_runs, tmp_path_factory) -> dict[str, Path]:
    """Copies of the shared runs, so the files written here never change what other tests see."""
    root = tmp_path_factory.mktemp("evaluated")
    return {kind: Path(shutil.copytree(trained_runs[kind], root / trained_runs[kind].name))
            for kind in ("baseline", "mobilenet_v2")}


@pytest.mark.parametrize("kind", ["baseline", "mobilenet_v2"])
def test_evaluation_matches_prediction_of_every_validation_file(run_copies, kind):
    from core.data.sources import VALIDATION, open_source
    from core.runs.folders import open_run
    from core.runs.predict import load_for_prediction, predict_bytes
    from core.settings.config import data_from_dict

    run = open_run(run_copies[kind])
    calls = []
    evaluation = evaluate_run(run.path, progress=lambda done, total: calls.append((done, total)))

    source = open_source(data_from_dict(run.config["data"]))
    files = source.files[VALIDATION]
    loaded = load_for_prediction(run.path)
    predictions = predict_bytes(loaded, [(str(p), p.read_bytes()) for p, _ in files])
    expected = confusion_matrix([label for _, label in files],
                                [loaded.class_names.index(p.label) for p in predictions], 2)
    assert evaluation.matrix == expected.tolist()
    assert evaluation.images == len(files) == run.metrics["val_images"]
    # the same split and preprocessing as training's last validation pass
    assert evaluation.accuracy == pytest.approx(run.metrics["final_val_accuracy"], abs=1e-6)
    assert calls[-1] == (len(files), len(files))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert load_evaluation(run.path) == evaluation
    stored = json.loads((run.path / EVALUATION_FILE).read_text())
    assert stored["class_names"] == ["circles", "squares"]
    assert sum(map(sum, stored["matrix"])) == len(files)


def test_training_code_can_pass_the_model_and_source_it_holds(run_copies):
    from core.data.sources import open_source
    from core.runs.folders import open_run
    from core.safety.model_files import load_model
    from core.settings.config import data_from_dict

    run = open_run(run_copies["baseline"])
    model, _ = load_model(run.model_path)
    source = open_source(data_from_dict(run.config["data"]))
    in_memory = evaluate_run(run.path, model=model, source=source)
    reloaded = evaluate_run(run.path)
    assert in_memory.matrix == reloaded.matrix and in_memory.images == reloaded.images


@pytest.fixture
def mock_tfds(monkeypatch, tmp_path):
    """TFDS with generated examples; is_prepared forced on, as a downloaded dataset would report."""
    import tensorflow_datasets as tfds

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=20):
        yield


def recorded_as_tfds(run: Path) -> None:
    """Make a copied run's config say it was trained on TFDS cats_vs_dogs (served by mock_tfds)."""
    config = json.loads((run / "config.json").read_text())
    config["data"]["source"] = "tfds:cats_vs_dogs"
    config["class_names"] = ["cat", "dog"]
    del config["dataset"]
    (run / "config.json").write_text(json.dumps(config))


def test_tfds_runs_are_evaluated_in_split_order(run_copies, tmp_path, mock_tfds):
    from core.data.sources import VALIDATION, open_source
    from core.runs.predict import load_for_prediction
    from core.settings.config import DataConfig

    run = Path(shutil.copytree(run_copies["baseline"], tmp_path / "run"))
    recorded_as_tfds(run)
    evaluation = evaluate_run(run, max_wrong=3)

    source = open_source(DataConfig(source="tfds:cats_vs_dogs", image_size=TEST_IMAGE_SIZE))
    examples = list(source.examples(VALIDATION).as_numpy_iterator())
    probs = load_for_prediction(run).probabilities([image for image, _ in examples])
    expected = confusion_matrix([label for _, label in examples], probs.argmax(axis=1), 2)
    assert evaluation.matrix == expected.tolist() and evaluation.images == 20
    wrong = [i for i, (p, (_, label)) in enumerate(zip(probs, examples)) if p.argmax() != label]
    assert len(evaluation.wrong) == min(3, len(wrong))
    for w in evaluation.wrong:
        position = int(w.source.removeprefix("validation image #"))
        assert position in wrong and w.confidence == pytest.approx(probs[position].max(), abs=1e-5)


def test_tfds_runs_evaluated_from_cached_features_match_the_whole_model(run_copies, tmp_path, mock_tfds,
                                                                        monkeypatch):
    from core.data.sources import open_source
    from core.settings.config import DataConfig

    run = Path(shutil.copytree(run_copies["mobilenet_v2"], tmp_path / "run"))
    recorded_as_tfds(run)
    source = open_source(DataConfig(source="tfds:cats_vs_dogs", image_size=TEST_IMAGE_SIZE))
    full, cached, full_calls, cached_calls = _evaluate_both_ways(run, source, monkeypatch, tmp_path)
    assert full_calls > 0 and cached_calls == 0 and cached.images == 20
    assert all(w.source.startswith("validation image #") for w in cached.wrong)
    _assert_same_evaluation(full, cached)


def test_a_run_that_was_never_evaluated_has_no_evaluation(run_copies, tmp_path):
    run = Path(shutil.copytree(run_copies["baseline"], tmp_path / "run", ignore=shutil.ignore_patterns("eval*")))
    assert load_evaluation(run) is None


def test_a_damaged_evaluation_file_says_to_evaluate_again(tmp_path):
    (tmp_path / EVALUATION_FILE).write_text("{not json")
    with pytest.raises(LabError, match="evaluate the run again"):
        load_evaluation(tmp_path)


def test_a_run_whose_dataset_is_gone_cannot_be_evaluated(run_copies, tmp_path):
    run = Path(shutil.copytree(run_copies["mobilenet_v2"], tmp_path / "run"))
    config = json.loads((run / "config.json").read_text())
    config["data"]["source"] = f"folder:{tmp_path / 'deleted'}"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(LabError, match="does not exist"):
        evaluate_run(run)


@pytest.fixture(scope="module")
def mislabelled_run(tmp_path_factory, demo_backbone) -> tuple[Path, set[str]]:
    """A three-class run whose validation folder has three images filed under the wrong class: a model
    that learned the shapes is confidently wrong about exactly those."""
    from core.data.demo import make_demo_folder
    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.training.experiment import run_experiment

    root = tmp_path_factory.mktemp("mislabelled")
    classes = ("circles", "squares", "triangles")
    make_demo_folder(root / "train", per_class=30, classes=classes, size=(80, 80), seed=1)
    make_demo_folder(root / "val", per_class=8, classes=classes, size=(80, 80), seed=2)
    wrong = set()
    for name, cls in (("squares_0000.jpg", "squares"), ("squares_0001.jpg", "squares"),
                      ("triangles_0000.jpg", "triangles")):
        target = root / "val" / "circles" / f"mislabelled_{name}"
        (root / "val" / cls / name).rename(target)
        wrong.add(target.relative_to(root).as_posix())  # stored relative: no server path in evaluation.json
    data = DataConfig(source=f"folder:{root}", image_size=TEST_IMAGE_SIZE, batch_size=16)
    run = run_experiment(data, TrainConfig(model=ModelKind.TRANSFER, epochs=10, learning_rate=1e-2,
                                           handle=str(demo_backbone)), tmp_path_factory.mktemp("runs"))
    return run, wrong


def test_gallery_holds_the_most_confidently_wrong_images(mislabelled_run):
    run, mislabelled = mislabelled_run
    evaluation = evaluate_run(run)
    assert evaluation.num_classes == 3 and len(evaluation.matrix) == 3
    circles = evaluation.class_names.index("circles")
    assert evaluation.matrix[circles][evaluation.class_names.index("squares")] >= 2
    assert evaluation.matrix[circles][evaluation.class_names.index("triangles")] >= 1
    sources = [w.source for w in evaluation.wrong]
    assert mislabelled <= set(sources)
    assert len(sources) == evaluation.errors
    confidences = [w.confidence for w in evaluation.wrong]
    assert confidences == sorted(confidences, reverse=True)
    for w in evaluation.wrong:
        if w.source in mislabelled:
            assert w.true_label == "circles"
            assert w.predicted_label == Path(w.source).name.split("_")[1]
            assert w.confidence > 0.5 and w.true_probability < 0.5
        with Image.open(w.thumbnail) as thumb:
            assert thumb.format == "PNG" and max(thumb.size) <= THUMBNAIL_SIDE
        assert w.thumbnail.is_relative_to(run / "evaluation")


def test_evaluation_json_names_images_relative_to_the_dataset(mislabelled_run):
    run, _ = mislabelled_run
    evaluate_run(run)
    stored = (run / EVALUATION_FILE).read_text()
    root = Source.parse(json.loads((run / "config.json").read_text())["data"]["source"]).value
    assert root not in stored
    assert all(not Path(w["source"]).is_absolute() for w in json.loads(stored)["wrong"])


def test_a_run_naming_a_server_folder_is_not_evaluated_on_a_hosted_lab(run_copies, tmp_path, monkeypatch):
    """An imported run records its data source; a hosted Lab must not open a server folder because of it."""
    from core.data import sources

    run = Path(shutil.copytree(run_copies["baseline"], tmp_path / "imported"))
    (run / EVALUATION_FILE).unlink(missing_ok=True)
    config = json.loads((run / "config.json").read_text())
    source = Source.parse(config["data"]["source"])
    assert source.is_folder and source.value.startswith("/")  # the demo folder: a server path, outside the cache
    opened = []
    monkeypatch.setattr(sources, "open_source", lambda *a, **k: opened.append(a))
    monkeypatch.setenv("LAB_PRESET", "cloud")
    with pytest.raises(LabError, match="does not read folders on the server"):
        evaluate_run(run)
    assert opened == [] and not (run / EVALUATION_FILE).exists()


def test_evaluating_again_keeps_only_the_new_thumbnails(mislabelled_run):
    run, _ = mislabelled_run
    first = evaluate_run(run)
    second = evaluate_run(run, max_wrong=1)
    assert len(second.wrong) == 1 and second.wrong[0].source == first.wrong[0].source
    assert second.wrong[0].thumbnail.is_file()
    assert not any(w.thumbnail.exists() for w in first.wrong)
    assert load_evaluation(run) == second


def test_report_lists_matrix_and_metrics(mislabelled_run):
    run, _ = mislabelled_run
    text = format_report(evaluate_run(run, max_wrong=2))
    assert "true \\ predicted  circles" in text
    assert "precision" in text and "recall" in text
    header = next(line for line in text.splitlines() if line.startswith("class "))
    assert header.split() == ["class", "precision", "recall", "F1", "accuracy", "images", "predicted"]
    macro = next(line for line in text.splitlines() if line.startswith("macro average"))
    evaluation = load_evaluation(run)
    assert macro.split()[2:] == [f"{v:.1%}" for v in evaluation.macro]
    assert "Most confidently wrong" in text and "mislabelled_" in text


def test_cli_evaluate_prints_the_matrix_and_saves_it(mislabelled_run, capsys):
    from core.cli import main

    run, _ = mislabelled_run
    assert main(["evaluate", str(run), "--wrong", "3"]) == 0
    out = capsys.readouterr().out
    assert "Confusion matrix" in out and "triangles" in out and "precision" in out
    assert len(load_evaluation(run).wrong) == 3


def test_cli_evaluate_of_a_folder_that_is_not_a_run_fails_cleanly(tmp_path, capsys):
    from core.cli import main

    assert main(["evaluate", str(tmp_path)]) == 1
    assert "not a complete run folder" in capsys.readouterr().err


def test_confusion_matrix_figure_shows_counts_and_row_shares(mislabelled_run):
    from core.present.evaluation_charts import confusion_matrix_figure

    run, _ = mislabelled_run
    evaluation = load_evaluation(run) or evaluate_run(run)
    fig = confusion_matrix_figure(evaluation)
    heat = fig.data[0]
    assert list(heat.x) == list(heat.y) == evaluation.class_names
    circles = evaluation.class_names.index("circles")
    row = evaluation.matrix[circles]
    assert heat.text[circles][circles] == f"{row[circles]}<br>{100 * row[circles] / sum(row):.1f}%"
    assert heat.z[circles][circles] == pytest.approx(100 * row[circles] / sum(row), abs=1e-3)


def test_figures_handle_classes_without_images():
    from core.present.evaluation_charts import confusion_matrix_figure
    from core.runs.evaluate import Evaluation

    matrix = confusion_matrix([0, 0, 1], [0, 1, 1], 3)
    pct = [[None if math.isnan(v) else v for v in row] for row in row_percentages(matrix)]
    evaluation = Evaluation(Path("."), NAMES, matrix.tolist(), pct, per_class_metrics(matrix, NAMES),
                            overall_accuracy(matrix), 3, 0, [], 0.0, 0.0)
    assert confusion_matrix_figure(evaluation).data[0].text[2][0] == "0<br>-"


def test_a_stored_evaluation_naming_a_thumbnail_outside_the_run_is_damaged(run_copies, tmp_path):
    run = Path(shutil.copytree(run_copies["baseline"], tmp_path / "run"))
    evaluate_run(run)
    stored = json.loads((run / EVALUATION_FILE).read_text())
    stored["wrong"] = [{"thumbnail": "../../../etc/hostname", "true_label": "a", "predicted_label": "b",
                        "confidence": 0.9, "true_probability": 0.1, "source": "x"}]
    (run / EVALUATION_FILE).write_text(json.dumps(stored))
    with pytest.raises(LabError, match="is damaged .*evaluate the run again"):
        load_evaluation(run)


def _count_backbone_calls(monkeypatch, model) -> list[int]:
    """Every call of the model's first layer (the hub backbone), traced or eager, adds one."""
    backbone = model.layers[0]
    calls = [0]
    original = backbone.call

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(backbone, "call", counted)
    return calls


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _evaluate_both_ways(run: Path, source, monkeypatch, tmp_path):
    """(evaluation through the whole model, its thumbnails' pixels, evaluation from cached features,
    backbone calls of each)."""
    from core.data.sources import VALIDATION
    from core.runs.folders import open_run
    from core.safety.model_files import load_model
    from core.settings.config import data_from_dict
    from core.training.features import FeatureStore, split_features

    opened = open_run(run)
    data = data_from_dict(opened.config["data"])
    model, _ = load_model(opened.model_path)
    got = split_features(model.layers[0], source, VALIDATION, data, opened.config["train"]["handle"],
                         store=FeatureStore(tmp_path / "features"))
    calls = _count_backbone_calls(monkeypatch, model)
    full = evaluate_run(run, model=model, source=source)
    full_calls = calls[0]
    thumbnails = [_pixels(w.thumbnail) for w in full.wrong]  # the next evaluation replaces the files
    cached = evaluate_run(run, model=model, source=source, features=(got.features, got.labels))
    return (full, thumbnails), cached, full_calls, calls[0] - full_calls


def _assert_same_evaluation(full_and_thumbnails, cached):
    full, thumbnails = full_and_thumbnails
    assert cached.matrix == full.matrix and cached.per_class == full.per_class
    assert cached.accuracy == full.accuracy and cached.images == full.images and cached.skipped == full.skipped
    assert [(w.source, w.true_label, w.predicted_label) for w in cached.wrong] == \
        [(w.source, w.true_label, w.predicted_label) for w in full.wrong]
    assert len(thumbnails) == len(cached.wrong)
    for a, b, pixels in zip(cached.wrong, full.wrong, thumbnails):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
        assert a.true_probability == pytest.approx(b.true_probability, abs=1e-5)
        assert np.array_equal(_pixels(a.thumbnail), pixels)  # the same resized input is shown


def test_cached_features_give_the_full_models_evaluation_without_the_backbone(mislabelled_run, monkeypatch,
                                                                              tmp_path):
    from core.data.sources import open_source
    from core.runs.folders import open_run
    from core.settings.config import data_from_dict

    run, mislabelled = mislabelled_run
    source = open_source(data_from_dict(open_run(run).config["data"]))
    full, cached, full_calls, cached_calls = _evaluate_both_ways(run, source, monkeypatch, tmp_path)
    assert full_calls > 0 and cached_calls == 0
    assert mislabelled <= {w.source for w in cached.wrong} and len(cached.wrong) >= 3
    _assert_same_evaluation(full, cached)


def test_cached_features_are_matched_to_their_files_past_an_unreadable_image(mislabelled_run, monkeypatch,
                                                                             tmp_path):
    from sample_images import noisy_jpeg

    from core.data.sources import FolderSource
    from core.runs.folders import open_run
    from core.settings.config import data_from_dict

    run, mislabelled = mislabelled_run
    data = data_from_dict(open_run(run).config["data"])
    root = Path(shutil.copytree(Source.parse(data.source).value, tmp_path / "data"))
    truncated = noisy_jpeg()
    # Its header reads, its pixels do not: extraction drops it, so later feature rows and files part ways.
    (root / "val" / "circles" / "0_truncated.jpg").write_bytes(truncated[:len(truncated) // 2])
    source = FolderSource(root, data)
    full, cached, _, cached_calls = _evaluate_both_ways(run, source, monkeypatch, tmp_path)
    assert full[0].skipped == 1 and cached_calls == 0
    assert {Path(s).name for s in mislabelled} <= {Path(w.source).name for w in cached.wrong}
    _assert_same_evaluation(full, cached)


def test_a_frozen_run_is_evaluated_without_running_the_backbone_again(demo_folder, demo_backbone, monkeypatch,
                                                                      tmp_path):
    import tensorflow_hub as hub

    import core.runs.evaluate
    from core.settings.config import DataConfig, ModelKind, TrainConfig
    from core.training.experiment import run_experiment

    calls = {"all": 0, "evaluating": 0}
    original_call, original_evaluate = hub.KerasLayer.call, core.runs.evaluate.evaluate_run
    evaluating = [False]

    def counted_call(self, *args, **kwargs):
        calls["all"] += 1
        calls["evaluating"] += evaluating[0]
        return original_call(self, *args, **kwargs)

    def watched_evaluate(*args, **kwargs):
        evaluating[0] = True
        try:
            return original_evaluate(*args, **kwargs)
        finally:
            evaluating[0] = False

    monkeypatch.setattr(hub.KerasLayer, "call", counted_call)
    monkeypatch.setattr(core.runs.evaluate, "evaluate_run", watched_evaluate)
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    data = DataConfig(source=f"folder:{demo_folder}", image_size=TEST_IMAGE_SIZE, batch_size=16, limit=40)
    run = run_experiment(data, TrainConfig(model=ModelKind.TRANSFER, epochs=1, handle=str(demo_backbone)),
                         tmp_path / "runs")
    assert calls["all"] > 0 and calls["evaluating"] == 0
    assert load_evaluation(run).images == json.loads((run / "metrics.json").read_text())["val_images"]
