"""Plain-text tables for the command line and the dashboard's comparison table."""
from core.runs.evaluate import Evaluation
from core.runs.folders import file_size_mb
from core.settings.text import megabytes, percent


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
    lines += ["", format_table(
        ["class", "precision", "recall", "accuracy", "images", "predicted"],
        [[m.name, percent(m.precision), percent(m.recall), percent(m.accuracy), str(m.support), str(m.predicted)]
         for m in evaluation.per_class])]
    if evaluation.wrong:
        lines += ["", "Most confidently wrong:"]
        for w in evaluation.wrong:
            lines.append(f"  {w.source}: true {w.true_label}, predicted {w.predicted_label} "
                         f"({w.confidence:.1%}); thumbnail {w.thumbnail}")
    return "\n".join(lines)
