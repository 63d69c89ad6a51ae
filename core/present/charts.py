"""Plotly figures for the dashboard; pages only hand them to st.plotly_chart.

Every chart draws a model in its spec's colour, so a presenter can point at "the orange
one" on any page. Training curves follow one convention everywhere: train dashed, validation solid,
the article's published curves faint and dotted, and a vertical dashed line where fine-tuning starts.
"""
from __future__ import annotations

import colorsys
from collections import Counter
from dataclasses import dataclass

import plotly.graph_objects as go

from core.settings.reference import article_headline_label, article_history, article_label
from core.settings.specs import ModelKind, spec
from core.settings.text import FINE_TUNE_PHASE, chart_text

NEUTRAL_COLOUR = "#7F7F7F"
SPLIT_COLOURS = {"train": "#4C5B7A", "validation": "#A7B4CC"}
SPLIT_NAMES = {"train": "Training", "validation": "Validation"}
METRICS = {
    "accuracy": ("accuracy", "val_accuracy", "Accuracy (%)"),
    "loss": ("loss", "val_loss", "Loss (cross-entropy)"),
}
# Large enough to read on a projector from the back of a room.
FONT = {"family": "Inter, Segoe UI, Helvetica, Arial, sans-serif", "size": 15}


@dataclass(frozen=True)
class CurveSeries:
    """One run's per-epoch history, as drawn on the training charts."""
    label: str
    model: ModelKind | None
    history: list[dict]
    shade: int = 0  # 0 for the first run of a model; later runs of the same model get other shades


def fine_tune_start(history: list[dict]) -> int | None:
    """The 1-based epoch where fine-tuning begins, from the history rows' "phase"; None without one."""
    return next((i for i, row in enumerate(history, 1) if row.get("phase") == FINE_TUNE_PHASE), None)


def model_kind(value) -> ModelKind | None:
    try:
        return ModelKind(value)
    except ValueError:
        return None


def model_colour(model: ModelKind | str | None, shade: int = 0) -> str:
    """The model's colour; shade 1, 2, ... give lighter and darker variants for further runs."""
    kind = model_kind(model)
    base = spec(kind).colour if kind else NEUTRAL_COLOUR
    if not shade:
        return base
    r, g, b = (int(base[i:i + 2], 16) / 255 for i in (1, 3, 5))
    h, lum, s = colorsys.rgb_to_hls(r, g, b)
    step = (shade + 1) // 2 * 0.13 * (1 if shade % 2 else -1)
    r, g, b = colorsys.hls_to_rgb(h, min(0.85, max(0.15, lum + step)), s)
    return f"#{round(r * 255):02X}{round(g * 255):02X}{round(b * 255):02X}"


def _style(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 420,
           subtitle: str | None = None) -> go.Figure:
    title_spec = {"text": title, "x": 0, "xanchor": "left", "y": 0.98, "yanchor": "top"}
    if subtitle:
        title_spec["subtitle"] = {"text": subtitle, "font": {"size": 13, "color": "#5B6478"}}
    fig.update_layout(
        title=title_spec, template="plotly_white", font=FONT, height=height,
        margin={"l": 10, "r": 10, "t": 90 if subtitle else 60, "b": 10},
        # Below the x-axis title, measured from the figure's edge, so it never covers the title or the data.
        legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.0, "x": 0,
                "font": {"size": 13}},
        hovermode="x unified",
    )
    fig.update_xaxes(title_text=x_title, showgrid=True, zeroline=False)
    fig.update_yaxes(title_text=y_title, showgrid=True, zeroline=False)
    return fig


def _scaled(values: list, metric: str) -> list:
    return [None if v is None else v * 100 for v in values] if metric == "accuracy" else values


def training_curves(series: list[CurveSeries], metric: str = "accuracy", show_article: bool = True,
                    show_reference: bool = True) -> go.Figure:
    """Train (dashed) and validation (solid) curves of every series on one pair of axes.

    metric is "accuracy" (drawn in %) or "loss". With show_article the article's per-epoch curves for the
    models on the chart are added as faint dotted traces; with show_reference its reported validation
    accuracies become labelled horizontal lines.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")
    train_key, val_key, y_title = METRICS[metric]
    unit = "%" if metric == "accuracy" else ""
    fig = go.Figure()
    max_epoch = 1
    for s in series:
        epochs = list(range(1, len(s.history) + 1))
        max_epoch = max(max_epoch, len(epochs))
        colour, label = model_colour(s.model, s.shade), chart_text(s.label)
        for key, dash, name in ((train_key, "dash", "training"), (val_key, "solid", "validation")):
            values = _scaled([row.get(key) for row in s.history], metric)
            # One legend entry per run: clicking it hides both of the run's curves.
            fig.add_trace(go.Scatter(
                x=epochs, y=values, name=label, legendgroup=label, showlegend=dash == "solid",
                mode="lines+markers", line={"color": colour, "dash": dash, "width": 3 if dash == "solid" else 2},
                marker={"size": 7 if dash == "solid" else 5},
                hovertemplate=f"{name}: %{{y:.2f}}{unit}<extra>{label}</extra>",
            ))
    kinds = [k for k in ModelKind if any(s.model is k for s in series)]
    if show_article:
        for kind in kinds:
            ref = article_history(kind)
            values = _scaled([row[val_key] for row in ref], metric)
            fig.add_trace(go.Scatter(
                x=[row["epoch"] for row in ref], y=values, name=article_label(kind),
                legendgroup=f"article-{kind.value}", mode="lines", opacity=0.45,
                line={"color": model_colour(kind), "dash": "dot", "width": 2},
                hovertemplate=f"validation: %{{y:.2f}}{unit}<extra>{article_label(kind)}</extra>",
            ))
            max_epoch = max(max_epoch, len(ref))
    if show_reference and metric == "accuracy":
        for kind in kinds:
            value = spec(kind).article_val_accuracy * 100
            fig.add_hline(
                y=value, line={"color": model_colour(kind), "width": 1.5, "dash": "longdashdot"}, opacity=0.8,
                annotation_text=article_headline_label(kind), annotation_position="bottom right",
                annotation_font={"color": model_colour(kind), "size": 13},
            )
    boundaries: dict[int, str] = {}
    for s in series:
        start = fine_tune_start(s.history)
        if start is not None:
            boundaries.setdefault(start, model_colour(s.model, s.shade))
    for start, colour in boundaries.items():
        # Between the last frozen epoch and the first fine-tuning one, where the backbone is unfrozen.
        # The label sits just above the plot area, where no curve (accuracies near 100%) can hide it.
        fig.add_vline(x=start - 0.5, line={"color": colour, "dash": "dash", "width": 2}, opacity=0.8,
                      annotation_text="fine-tuning starts", annotation_position="top right",
                      annotation={"yanchor": "bottom", "font": {"color": colour, "size": 13}})
    title = "Accuracy per epoch" if metric == "accuracy" else "Loss per epoch"
    subtitle = "dashed: training · solid: validation" + (" · dotted: the article" if show_article else "")
    _style(fig, title, "Epoch", y_title, height=460, subtitle=subtitle)
    fig.update_layout(hovermode="closest")
    fig.update_xaxes(range=[0.5, max_epoch + 0.5], dtick=1 if max_epoch <= 20 else None)
    if metric == "accuracy":
        fig.update_yaxes(ticksuffix="%", range=[0, 103])
    else:
        fig.update_yaxes(rangemode="tozero")
    return fig


def class_counts_bar(counts: dict[str, dict[str, int]]) -> go.Figure:
    """Images per class, one bar per split side by side (counts: split -> class -> n)."""
    fig = go.Figure()
    for split, per_class in counts.items():
        fig.add_trace(go.Bar(
            x=[chart_text(n) for n in per_class], y=list(per_class.values()),
            name=SPLIT_NAMES.get(split, split.capitalize()),
            marker_color=SPLIT_COLOURS.get(split, NEUTRAL_COLOUR), text=list(per_class.values()),
            textposition="outside", cliponaxis=False, hovertemplate="%{x}: %{y} images",
        ))
    _style(fig, "Images per class and split", "Class", "Images", height=380)
    fig.update_layout(barmode="group", hovermode="closest", margin={"t": 70})
    return fig


def image_size_scatter(sizes: list[tuple[int, int]], sampled: bool = False) -> go.Figure:
    """Original width x height of the images; repeated sizes drawn as larger markers."""
    tally = Counter((int(w), int(h)) for w, h in sizes)
    xs, ys, ns = zip(*((w, h, n) for (w, h), n in tally.items())) if tally else ((), (), ())
    peak = max(ns) if ns else 1
    fig = go.Figure(go.Scatter(
        x=xs, y=ys, mode="markers", customdata=ns,
        marker={"size": [8 + 22 * (n / peak) ** 0.5 for n in ns], "color": "#4C5B7A", "opacity": 0.55,
                    "line": {"width": 0}},
        hovertemplate="%{x} x %{y} px: %{customdata} images<extra></extra>",
    ))
    suffix = f" (a sample of {len(sizes)})" if sampled else f" ({len(sizes)} images)"
    _style(fig, "Original image sizes" + suffix, "Width (px)", "Height (px)", height=380)
    fig.update_layout(hovermode="closest", showlegend=False)
    fig.update_xaxes(rangemode="tozero")
    fig.update_yaxes(rangemode="tozero")
    return fig


def probability_bar(probabilities: dict[str, float], colour: str | None = None) -> go.Figure:
    """Horizontal bars of class probabilities in %, the predicted class highlighted."""
    values = [p * 100 for p in probabilities.values()]
    names = [chart_text(n) for n in probabilities]
    top = max(range(len(values)), key=values.__getitem__) if values else -1
    highlight = colour or spec(ModelKind.TRANSFER).colour
    fig = go.Figure(go.Bar(
        x=values, y=names, orientation="h", text=[f"{v:.1f}%" for v in values], textposition="outside",
        cliponaxis=False, marker_color=[highlight if i == top else "#C9CED8" for i in range(len(values))],
        hovertemplate="%{y}: %{x:.2f}%<extra></extra>",
    ))
    _style(fig, "", "Probability (%)", "", height=max(140, 60 + 34 * len(names)))
    fig.update_layout(margin={"l": 10, "r": 40, "t": 10, "b": 10}, showlegend=False, hovermode="closest")
    fig.update_xaxes(range=[0, 112], ticksuffix="%")
    fig.update_yaxes(autorange="reversed", title_text=None)
    return fig


def data_efficiency_chart(result) -> go.Figure:
    """Validation accuracy against training images per class, one line per model (a
    core.training.efficiency.EfficiencyResult): how much data each model needs."""
    fig = go.Figure()
    for kind in ModelKind:
        points = result.accuracies(kind)
        if not points:
            continue
        label = chart_text(result.labels.get(kind, kind.value))
        fig.add_trace(go.Scatter(
            x=[n for n, _ in points], y=[acc * 100 for _, acc in points], name=label, mode="lines+markers",
            line={"color": model_colour(kind), "width": 3}, marker={"size": 9},
            hovertemplate=f"%{{x}} images per class: %{{y:.1f}}%<extra>{label}</extra>",
        ))
    epochs = " · ".join(f"{chart_text(result.labels.get(k, k.value))}: {n} epochs" for k, n in result.epochs.items())
    _style(fig, "Validation accuracy by training images per class", "Training images per class (log scale)",
           "Validation accuracy (%)", height=440, subtitle=f"{result.val_images} validation images · {epochs}")
    counts = sorted({n for k in ModelKind for n, _ in result.accuracies(k)})
    fig.update_layout(hovermode="closest")
    fig.update_xaxes(type="log", tickvals=counts, ticktext=[str(n) for n in counts])
    fig.update_yaxes(ticksuffix="%", range=[0, 103])
    return fig
