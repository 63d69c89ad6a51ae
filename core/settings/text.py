"""Shared vocabulary, number formatting and the naming of datasets and classes: one rule for each, used by messages, the CLI and the pages.

Sizes are decimal megabytes (1 MB = 1,000,000 bytes) everywhere the Lab shows one.
"""
import html
import math

from core.settings.source import Source

# The "phase" of a history row: a baseline epoch, a frozen-backbone epoch, or a fine-tuning epoch.
TRAIN_PHASE = "train"
FROZEN_PHASE = "frozen"
FINE_TUNE_PHASE = "fine-tune"


def is_number(value) -> bool:
    """A finite int or float, not a bool: what a figure read from a file must be to be shown or compared."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def megabytes(n_bytes: float) -> str:
    """'105 MB', '2.5 MB', '0.012 MB': whole numbers for big files, a tiny head on a small backbone still non-zero."""
    if not is_number(n_bytes):
        return "-"
    mb = n_bytes / 1e6
    if mb >= 10:
        return f"{mb:,.0f} MB"
    return f"{mb:.1f} MB" if mb >= 1 else f"{mb:.3f} MB"


def percent(value, digits: int = 1) -> str:
    """A fraction in [0, 1] as '87.5%'; '-' when there is no number."""
    return "-" if not is_number(value) else f"{value:.{digits}%}"


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 31 min': how long, at a glance."""
    if not is_number(seconds):
        return "-"
    if 0 < seconds < 0.5:
        return "under 1 s"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s" if minutes < 10 and secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# Markdown's punctuation that can make markup inline (links, images, emphasis, code, tables; ":" and "$"
# start Streamlit's icons, colours and maths); backslashed, each shows as itself. Dots and dashes, which
# matter only at the start of a line, stay as they are so that file names read plainly.
_MARKDOWN_SPECIALS = frozenset("\\`*_{}[]()#+!|~:$")
_HTML_SPECIALS = {"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&#x27;"}


def markdown_literal(text) -> str:
    """Text from a file, run, model or upload, made safe to place in st.markdown (with or without HTML).

    HTML's characters become entities and markdown's are backslashed, so `<iframe srcdoc=...>`,
    `[x](javascript:...)` or `:red[...]` show literally and never become markup. Line breaks become spaces.
    """
    out = []
    for char in " ".join(str(text).split()) if text is not None else "":
        if char in _HTML_SPECIALS:
            out.append(_HTML_SPECIALS[char])
        elif char in _MARKDOWN_SPECIALS:
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def chart_text(text) -> str:
    """A name as a Plotly chart should draw it: literally. Plotly reads a few HTML tags in its labels, legends
    and hover boxes (<b>, <br>, styled spans, links) and its entities, so <, > and & become entities."""
    return html.escape(str(text), quote=False)


def dataset_name(source: str) -> str:
    """A dataset's short name: the TFDS name or the folder's own name ('tfds:cats_vs_dogs' -> 'cats_vs_dogs')."""
    return Source.parse(source).name


def class_list(names, shown: int = 4) -> str:
    """'circles, squares' or 'a, b, c, d +3 more': a run's classes at a glance."""
    names = [str(n) for n in names]
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" +{more} more" if more > 0 else "")
