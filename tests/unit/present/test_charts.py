"""Plotly figure builders: one colour per model everywhere, readable axes, the article's reference."""
from __future__ import annotations

import pytest

from core.present.charts import (
    CurveSeries,
    class_counts_bar,
    image_size_scatter,
    model_colour,
    probability_bar,
    training_curves,
)
from core.settings.config import ModelKind
from core.settings.reference import article_history
from core.settings.specs import SPECS, spec

BASELINE = [{"loss": 0.7, "accuracy": 0.5, "val_loss": 0.68, "val_accuracy": 0.55},
            {"loss": 0.6, "accuracy": 0.65, "val_loss": 0.62, "val_accuracy": 0.66}]
TRANSFER = [{"loss": 0.1, "accuracy": 0.95, "val_loss": 0.05, "val_accuracy": 0.98}]


def series() -> list[CurveSeries]:
    return [CurveSeries("Baseline CNN", ModelKind.BASELINE, BASELINE),
            CurveSeries("MobileNetV2 transfer", ModelKind.TRANSFER, TRANSFER)]


def traces(fig, name: str):
    return [t for t in fig.data if t.name == name]


def test_accuracy_curves_overlay_both_models_in_percent_with_train_dashed_and_validation_solid():
    fig = training_curves(series(), "accuracy", show_article=False, show_reference=False)
    train, val = traces(fig, "Baseline CNN")
    assert (train.line.dash, val.line.dash) == ("dash", "solid")
    assert list(train.y) == pytest.approx([50, 65]) and list(val.y) == pytest.approx([55, 66])
    assert list(val.x) == [1, 2]
    assert {t.line.color for t in traces(fig, "Baseline CNN")} == {spec(ModelKind.BASELINE).colour}
    assert {t.line.color for t in traces(fig, "MobileNetV2 transfer")} == {spec(ModelKind.TRANSFER).colour}
    # One legend entry per run: the validation curve carries it, the training curve joins its group.
    assert [t.showlegend for t in traces(fig, "Baseline CNN")] == [False, True]
    assert fig.layout.xaxis.title.text == "Epoch"
    assert fig.layout.yaxis.title.text == "Accuracy (%)"
    assert fig.layout.yaxis.ticksuffix == "%"
    assert not fig.layout.shapes


def test_the_articles_curves_and_reported_accuracies_are_optional_overlays():
    fig = training_curves(series(), "accuracy", show_article=True, show_reference=True)
    article = traces(fig, "Article: Baseline CNN")[0]
    assert article.line.dash == "dot" and article.opacity < 1
    assert article.line.color == spec(ModelKind.BASELINE).colour
    assert list(article.y) == pytest.approx([r["val_accuracy"] * 100 for r in article_history(ModelKind.BASELINE)])
    assert sorted(shape.y0 for shape in fig.layout.shapes) == pytest.approx([88, 98])
    labels = {a.text for a in fig.layout.annotations}
    assert labels == {"Article: Baseline CNN 88%", "Article: MobileNetV2 98%"}  # the article's, never this run's target
    assert {a.font.color for a in fig.layout.annotations} == {s.colour for s in SPECS.values()}
    # Only the models on the chart get the article's overlays.
    only_baseline = training_curves(series()[:1], "accuracy")
    assert not traces(only_baseline, "Article: MobileNetV2 transfer")
    assert len(only_baseline.layout.shapes) == 1


def test_loss_curves_have_no_accuracy_lines_and_keep_raw_values():
    fig = training_curves(series(), "loss")
    assert not fig.layout.shapes
    train, val = traces(fig, "Baseline CNN")
    assert list(train.y) == pytest.approx([0.7, 0.6])
    assert list(val.y) == pytest.approx([0.68, 0.62])
    assert fig.layout.yaxis.title.text == "Loss (cross-entropy)"
    with pytest.raises(ValueError, match="metric"):
        training_curves(series(), "f1")


def test_further_runs_of_a_model_get_shades_of_its_colour():
    base = model_colour(ModelKind.BASELINE)
    shades = {model_colour(ModelKind.BASELINE, shade) for shade in range(4)}
    assert base == spec(ModelKind.BASELINE).colour and len(shades) == 4
    assert model_colour("baseline") == base and model_colour("mobilenet_v2") == spec(ModelKind.TRANSFER).colour
    assert model_colour("unknown") == model_colour(None)  # neutral, never an error for odd run folders


def test_class_counts_bar_has_one_trace_per_split():
    fig = class_counts_bar({"train": {"cat": 80, "dog": 78}, "validation": {"cat": 20, "dog": 19}})
    assert [t.name for t in fig.data] == ["Training", "Validation"]
    assert list(fig.data[0].x) == ["cat", "dog"] and list(fig.data[1].y) == [20, 19]
    assert fig.layout.barmode == "group"
    assert fig.layout.yaxis.title.text == "Images"


def test_image_sizes_are_tallied_and_labelled():
    fig = image_size_scatter([(500, 375)] * 3 + [(320, 240)], sampled=True)
    points = dict(zip(zip(fig.data[0].x, fig.data[0].y), fig.data[0].customdata))
    assert points == {(500, 375): 3, (320, 240): 1}
    assert "a sample of 4" in fig.layout.title.text
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("Width (px)", "Height (px)")
    assert image_size_scatter([]).data[0].x == ()


def test_probability_bar_highlights_the_predicted_class():
    fig = probability_bar({"cat": 0.2, "dog": 0.8}, colour="#123456")
    bar = fig.data[0]
    assert list(bar.x) == pytest.approx([20, 80])
    assert list(bar.marker.color) == ["#C9CED8", "#123456"]
    assert list(bar.text) == ["20.0%", "80.0%"]


def test_the_start_of_fine_tuning_is_a_labelled_dashed_line_between_epochs():
    history = [dict(TRANSFER[0], phase=phase) for phase in ("frozen", "frozen", "fine-tune")]
    fig = training_curves([CurveSeries("MobileNetV2 transfer", ModelKind.TRANSFER, history)], "loss",
                          show_article=False)
    lines = [shape for shape in fig.layout.shapes if shape.x0 == shape.x1]
    assert [line.x0 for line in lines] == [2.5] and lines[0].line.dash == "dash"
    assert [a.text for a in fig.layout.annotations] == ["fine-tuning starts"]
    assert not training_curves(series(), "loss", show_article=False).layout.shapes


def test_names_from_files_are_drawn_literally_not_as_plotly_markup():
    """Plotly reads <b>, <br>, styled spans and links in labels, legends and hovers; a stranger's class or run
    name is drawn as the text it is (entities, which Plotly shows as the characters)."""
    hostile = '<span style="font-size:90px">big</span> & <a href="https://x">link</a>'
    shown = '&lt;span style="font-size:90px"&gt;big&lt;/span&gt; &amp; &lt;a href="https://x"&gt;link&lt;/a&gt;'
    assert probability_bar({hostile: 0.7, "dog": 0.3}).data[0].y == (shown, "dog")
    assert class_counts_bar({"train": {hostile: 3}}).data[0].x == (shown,)
    curves = training_curves([CurveSeries(hostile, ModelKind.BASELINE, [{"accuracy": 0.5, "val_accuracy": 0.5}])])
    assert {t.name for t in curves.data if t.legendgroup == shown} == {shown}
