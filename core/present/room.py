"""The workshop room's faces without Streamlit: the join link, its QR code and the room's table."""
from __future__ import annotations

import io
import time
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from core.settings.text import class_list, duration, percent

# Streamlit Community Cloud serves an app inside a frame at `<app address>/~/+/`; the link to share is
# the address around it.
_CLOUD_FRAME = "/~/+"
MAX_LINK_CHARS = 2000  # a browser's address, not a document: a longer one is not the app's


def join_link(url: str | None, page_paths: Iterable[str]) -> str | None:
    """The app's own address, for others to open: the page's address without its query (which carries
    this session's private key), its fragment, or the page's own path. None when url is not a web address.
    """
    if not isinstance(url, str) or len(url) > MAX_LINK_CHARS:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return None
    path = parts.path.rstrip("/")
    head, _, last = path.rpartition("/")
    if last and last in {p for p in page_paths if p}:
        path = head
    path = path.removesuffix(_CLOUD_FRAME)
    return urlunsplit((parts.scheme, parts.netloc, path + "/", "", ""))


def only_this_machine(link: str) -> bool:
    """Whether link names this machine itself (localhost, 127.0.0.1, ::1): no one else can open it."""
    host = (urlsplit(link).hostname or "").lower()
    return host == "localhost" or host.endswith(".localhost") or host.startswith("127.") or host in ("::1", "0.0.0.0")


def qr_png(text: str, scale: int = 8) -> bytes:
    """A QR code of text as a PNG: dark modules on white, with the quiet zone readers need."""
    import segno  # only the Home page's expander draws one

    buffer = io.BytesIO()
    segno.make(text, error="m").save(buffer, kind="png", scale=scale, border=4)
    return buffer.getvalue()


def images_per_class(counts: tuple[int, int] | None) -> str:
    """'60' when every class has as many images, '40-60' otherwise; '-' when unknown."""
    if not counts:
        return "-"
    low, high = counts
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def _took(run) -> str:
    return duration(run.seconds) if run is not None and run.seconds is not None else "-"


def room_table(rows) -> list[dict]:
    """The Room page's table: one dict per core.runs.room.RoomRow, every value plain text or a number.

    Names and classes are a stranger's text: the page shows these in table cells, which never render markup.
    """
    table = []
    for row in rows:
        baseline, transfer = row.baseline, row.transfer
        table.append({
            "Participant": row.name,
            # The two accuracies first: on a phone they are what fits beside the name.
            "Baseline CNN": percent(baseline.val_accuracy) if baseline else "-",
            "Transfer": percent(transfer.val_accuracy) if transfer else "-",
            "Dataset": row.dataset,
            "Classes": f"{len(row.classes)}: {class_list(row.classes, shown=3)}",
            "Images/class": images_per_class(row.images_per_class),
            "Transfer model": transfer.model if transfer else "-",
            "Time": f"{_took(baseline)} / {_took(transfer)}",  # baseline / transfer, as the page says
            "Finished": time.strftime("%H:%M", time.localtime(row.at)),
        })
    return table


def room_run_option(row, run) -> str:
    """A run in the room's picker: 'Ana · 97.5% · Transfer (backbone) · shapes' (a phone cuts the end off)."""
    return f"{row.name} · {percent(run.val_accuracy)} · {run.model} · {row.dataset}"
