"""Tables for the command line and the dashboard: run comparisons (with the article's rows), layer
summaries, evaluation reports."""
import math

from core.runs.evaluate import Evaluation
from core.runs.folders import file_size_mb
from core.runs.reload_check import RELOAD_CHECK_KEY
from core.settings.config import MOBILENET_V2_HANDLE, ModelKind, model_label
from core.settings.reference import article_history, article_params, article_trainable_params
from core.settings.text import duration, is_number, megabytes, percent

MAX_LAYER_ROWS = 500  # a layers.json longer than this was not written by the Lab; its first rows are shown


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def compare_rows(records) -> tuple[list[str], list[list[str]]]:
    """One row per run: what `compare` and `runs` print and the Experiments page's comparison table shows."""
    headers = ["run", "model", "epochs", "total params", "trainable", "s/epoch", "best val acc",
               "final val acc", "model MB"]
    rows = []
    for r in records:
        m = r.metrics
        rows.append([r.run_id, r.model_name, str(len(r.history)), f"{m.get('total_params', 0):,}",
                     f"{m.get('trainable_params', 0):,}", f"{m.get('seconds_per_epoch', float('nan')):.1f}",
                     percent(m.get("best_val_accuracy"), 2), percent(m.get("final_val_accuracy"), 2),
                     megabytes(file_size_mb(r.model_path) * 1e6).removesuffix(" MB")])
    return headers, rows


def article_rows() -> list[list[str]]:
    """The article's two models as rows of compare_rows' columns, to sit beside this Lab's runs."""
    rows = []
    for kind in ModelKind:
        ref = article_history(kind)
        vals = [row["val_accuracy"] for row in ref]
        rows.append(["The article (GPU)", model_label(kind, MOBILENET_V2_HANDLE), str(len(ref)), f"{article_params(kind):,}",
                     f"{article_trainable_params(kind):,}", f"{sum(r['seconds'] for r in ref) / len(ref):.1f}",
                     percent(max(vals), 2), percent(vals[-1], 2), "-"])
    return rows


def layer_rows(record, shape=str) -> list[dict] | None:
    """The run's layers (name, type, output shape, parameters, trained) from its checked layers.json, or None."""
    layers = record.layers
    if layers is None:
        return None
    rows = []
    for r in layers[:MAX_LAYER_ROWS]:
        params = r.get("params", 0)
        rows.append({"Layer": str(r.get("name", "")), "Type": str(r.get("type", "")),
                     "Output shape": shape(r.get("output_shape")),
                     "Parameters": f"{int(params):,}" if isinstance(params, (int, float)) and abs(params) < 1e15
                     else "-",
                     "Trained": "yes" if r.get("trainable") else "no"})
    return rows


def format_report(evaluation: Evaluation) -> str:
    """The confusion matrix and the per-class table as plain text, for the command line."""
    names = evaluation.class_names
    lines = [f"{evaluation.images} validation images, accuracy {evaluation.accuracy:.2%} ({evaluation.errors} wrong)"]
    if evaluation.skipped:
        lines.append(f"{evaluation.skipped} unreadable validation images were skipped.")
    lines += evaluation.notes
    lines += ["", "Confusion matrix (rows: true class, columns: predicted; count and share of the row)"]
    rows = []
    for name, counts, pcts in zip(names, evaluation.matrix, evaluation.row_percentages):
        rows.append([name] + [f"{c} ({'-' if p is None else f'{p:.1f}%'})" for c, p in zip(counts, pcts)])
    lines.append(format_table(["true \\ predicted"] + names, rows))
    macro = evaluation.macro
    lines += ["", format_table(
        ["class", "precision", "recall", "F1", "accuracy", "images", "predicted"],
        [[m.name, percent(m.precision), percent(m.recall), percent(m.f1), percent(m.accuracy), str(m.support),
          str(m.predicted)] for m in evaluation.per_class]
        + [["macro average", percent(macro.precision), percent(macro.recall), percent(macro.f1), "", "", ""]])]
    if evaluation.wrong:
        lines += ["", "Most confidently wrong:"]
        for w in evaluation.wrong:
            lines.append(f"  {w.source}: true {w.true_label}, predicted {w.predicted_label} "
                         f"({w.confidence:.1%}); thumbnail {w.thumbnail}")
    return "\n".join(lines)


def describe_reload_check(metrics: dict) -> str:
    """The run's reload check in the article's terms, one sentence; says so when the run has none."""
    check = metrics.get(RELOAD_CHECK_KEY)
    if not isinstance(check, dict):
        return "No reload check recorded: the run was saved before the Lab recorded one."
    if isinstance(check.get("error"), str):
        return f"The reload check could not run: {check['error']}"
    diff, images, seconds = check.get("max_abs_diff"), check.get("images"), check.get("reload_seconds")
    if not (is_number(diff) and is_number(images) and is_number(seconds)):
        return "The recorded reload check is damaged (its figures are not numbers)."
    verdict = ("exactly 0.0: the saved file reproduces the trained model, as in the article" if diff == 0
               else f"{diff:.2e}" + (": float rounding, the same predictions" if diff < 1e-5
                                      else ": the saved file does not reproduce the trained model"))
    reload_time = f"{seconds:.2f} s" if seconds < 10 else duration(seconds)
    return (f"model.h5 reloaded in {reload_time}; on {int(images)} validation images the largest difference "
            f"between the reloaded model's predictions and the trained model's is {verdict}.")


def json_safe(value):
    """value with NaN and infinities as null: a run's metrics may hold them, strict JSON readers refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def run_summary(record) -> dict:
    """One run for scripts (`runs --json`, `compare --json`): where it is, what it learnt from, its metrics."""
    data = record.config.get("data", {})
    return {"run_id": record.run_id, "path": str(record.path), "model": record.model_kind,
            "dataset": data.get("source") if isinstance(data, dict) else None, "class_names": record.class_names,
            "epochs": len(record.history), "parent": record.config.get("parent"), "metrics": record.metrics}
