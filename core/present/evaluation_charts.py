"""Plotly figures for evaluations and explanation heatmaps; pages only hand them to st.plotly_chart.

Nothing here imports TensorFlow: the figures are drawn from a stored Evaluation or an Explanation.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from core.present.charts import FONT
from core.runs.evaluate import Evaluation
from core.runs.explain import OVERLAY_ALPHA, Explanation, plotly_colorscale, resize_map
from core.settings.text import chart_text

# Above this many classes the cells are too small for their numbers; hovering still shows them.
MAX_ANNOTATED_CLASSES = 15
# Browsers slow down on heatmaps of millions of cells; the figure shows a downscaled copy.
MAX_FIGURE_SIDE = 384


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left"}, template="plotly_white", font=FONT,
                      height=height, margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


def confusion_matrix_figure(evaluation: Evaluation) -> go.Figure:
    """True classes down, predicted classes across; colour is the share of the row, text the count too."""
    names = [chart_text(n) for n in evaluation.class_names]
    pct = [[np.nan if v is None else v for v in row] for row in evaluation.row_percentages]
    text = [[f"{count}<br>{'-' if p is None else f'{p:.1f}%'}" for count, p in zip(counts, pcts)]
            for counts, pcts in zip(evaluation.matrix, evaluation.row_percentages)]
    annotate = len(names) <= MAX_ANNOTATED_CLASSES
    fig = go.Figure(go.Heatmap(
        z=pct, x=names, y=names, text=text, texttemplate="%{text}" if annotate else None,
        colorscale="Blues", zmin=0, zmax=100, xgap=2, ygap=2,
        colorbar={"title": {"text": "% of true class"}, "ticksuffix": "%"},
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
    ))
    fig.update_xaxes(title="predicted class", side="bottom", type="category")
    fig.update_yaxes(title="true class", autorange="reversed", type="category")
    side = min(900, 260 + 48 * len(names))
    return _layout(fig, f"Confusion matrix: {evaluation.images} validation images, "
                        f"accuracy {evaluation.accuracy:.1%}", side)


def _downscaled(image: np.ndarray, heatmap: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    height, width = heatmap.shape
    scale = max_side / max(height, width)
    if scale >= 1:
        return image, heatmap
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return small, resize_map(heatmap, size[1], size[0])


def heatmap_overlay_figure(image: np.ndarray, explanation: Explanation,
                           max_side: int = MAX_FIGURE_SIDE) -> go.Figure:
    """The image with the explanation's heatmap over it and a colour bar as its legend; hovering a pixel
    shows its value. The colours and their weight match explanation.overlay."""
    shown, heat = _downscaled(image, explanation.heatmap, max_side)
    fig = go.Figure(go.Image(z=shown, hoverinfo="skip"))
    fig.add_heatmap(
        z=heat, zmin=0, zmax=1, colorscale=plotly_colorscale(), opacity=OVERLAY_ALPHA,
        colorbar={"title": {"text": "importance"}, "tickvals": [0, 0.5, 1],
                  "ticktext": ["0 none", "0.5", "1 most"]},
        hovertemplate="importance %{z:.2f}<extra></extra>",
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    return _layout(fig, f"{explanation.label} for '{explanation.class_name}' "
                        f"({explanation.probability:.1%})", 460)
