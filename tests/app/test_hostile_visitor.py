"""What a hostile visitor of a hosted Lab brings, through the pages: text they control (a run's model kind
and class names, an .h5's class names, an uploaded file's name) reaches the pages only as text, never as
HTML or a markdown link; and a run imported twice leaves the Experiments page working.

The browser half of the text checks (the same run in Chromium, asserting no script ran) is in tests/system.
"""
from __future__ import annotations

import io

from hostile_files import XSS_CLASSES, XSS_KIND, hostile_run
from lab_helpers import run_picker
from PIL import Image

from core.settings.text import markdown_literal as plain

PAYLOAD_MARKERS = ("<img", "<iframe", "](javascript:")


def rendered(at) -> list:
    """Every markdown-rendering element's body (markdown, captions, headings)."""
    return [*at.markdown, *at.caption]


def assert_only_literal(at) -> None:
    for element in rendered(at):
        assert not any(marker in element.value for marker in PAYLOAD_MARKERS), element.value


def test_plain_escapes_html_and_markdown_and_keeps_ordinary_names():
    assert plain("cats") == "cats"
    assert plain("<b>x</b>") == "&lt;b&gt;x&lt;/b&gt;"
    assert plain("[a](javascript:x)") == "\\[a\\]\\(javascript\\:x\\)"
    assert plain(":red[x] $y$") == "\\:red\\[x\\] \\$y\\$"
    assert plain("a\nb") == "a b"
    assert plain(None) == ""


def test_a_run_named_with_markup_is_shown_as_text_on_experiments_and_predict(open_page, trained_runs, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    hostile_run(trained_runs["baseline"], runs)

    at = open_page("experiments", runs_dir=runs)
    assert not at.exception
    assert at.multiselect[0].value == ["20300101-000000-hostile"]  # preselected: every visitor sees it
    assert_only_literal(at)
    assert any(f"**{plain(XSS_KIND)}**" in m.value for m in at.markdown)

    predict = open_page("predict", runs_dir=runs)
    assert not predict.exception and not predict.error
    assert_only_literal(predict)
    assert any(", ".join(plain(n) for n in XSS_CLASSES) in m.value for m in predict.markdown)
    image = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(image, "PNG")
    name = '<img src=x onerror="window.__xss=1">.png'
    predict.file_uploader[0].set_value([(name, image.getvalue(), "image/png")]).run()
    assert not predict.exception and not predict.error
    assert_only_literal(predict)
    headings = [m.value for m in predict.markdown if m.value.startswith("### ")]
    assert headings and all(h.removeprefix("### ") in {plain(n) for n in XSS_CLASSES} for h in headings)


def test_importing_a_run_already_here_keeps_the_page_working(open_page, trained_runs, tmp_path):
    import shutil

    from core.runs.archives import export_run_zip

    runs = tmp_path / "runs"
    original = trained_runs["baseline"].name
    shutil.copytree(trained_runs["baseline"], runs / original)
    at = open_page("experiments", runs_dir=runs)
    [uploader] = [u for u in at.file_uploader if u.key == "run_import_zip"]
    uploader.set_value(("again.zip", export_run_zip(trained_runs["baseline"]), "application/zip")).run()
    at.button(key="run_import").click().run()
    for _ in range(2):  # the next clicks used to raise StreamlitDuplicateElementKey
        assert not at.exception
        shown = run_picker(at).value
        assert len(shown) == len(set(shown)) == 2 and original in shown
        at.toggle(key="exp_show_article").set_value(False).run()
    options = run_picker(at).options
    assert len(options) == len(set(options)) == 2
