"""The dashboard in a real browser: `streamlit run` on a free port, every page in headless Chromium.

One screenshot per page lands in test-artifacts/screenshots/ (with the server's log next to it) so a
person can look at what the pages really look like.
"""
from __future__ import annotations

import re

import pytest
from system_helpers import TIMEOUT_MS, settle, shoot, start_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(trained_runs, _isolated_cache):
    with start_server(trained_runs["dir"]) as url:
        yield url


@pytest.fixture(scope="module")
def page(browser):
    tab = browser.new_page(viewport={"width": 1440, "height": 900})
    tab.set_default_timeout(TIMEOUT_MS)
    return tab


def go(tab, title: str, heading: str | None = None) -> None:
    """Follow the sidebar link named title, in the same session, and wait for the page's heading."""
    tab.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    tab.get_by_role("heading", name=heading or title, exact=True).first.wait_for()
    settle(tab)


def no_exception(tab) -> None:
    assert tab.get_by_test_id("stException").count() == 0, tab.get_by_test_id("stException").first.inner_text()


def test_every_page_in_chromium(page, server, demo_folder, trained_runs):
    from core.runs.predict import load_for_prediction, predict_bytes

    # A deep link as the server's very first request still goes through the entry script's navigation.
    page.goto(f"{server}/predict")
    page.get_by_role("heading", name="Predict", exact=True).first.wait_for()
    settle(page)
    nav = page.get_by_test_id("stSidebarNav").inner_text()
    assert all(title in nav for title in ("Home", "Dataset", "Experiments", "Predict"))
    assert "common" not in nav and "streamlit app" not in nav
    assert "Lab status" in page.get_by_test_id("stSidebar").inner_text()

    go(page, "Home", heading="Transfer Learning Lab")
    assert page.get_by_text("Start here").count() == 1
    no_exception(page)
    shoot(page, "1-home")

    go(page, "Dataset")
    page.get_by_text("A folder on this machine").click()
    field = page.get_by_label("Folder path")
    field.fill(str(demo_folder))
    field.press("Enter")
    settle(page)
    page.get_by_role("button", name="Load dataset").click()
    page.get_by_test_id("stImage").nth(15).wait_for()
    settle(page)
    assert page.get_by_test_id("stImage").count() >= 16
    assert page.locator(".js-plotly-plot").count() >= 2
    assert str(demo_folder) in page.get_by_test_id("stSidebar").inner_text()
    no_exception(page)
    shoot(page, "2-dataset")

    go(page, "Experiments")
    # Estimates are timed in a child process that imports TensorFlow, after the page is drawn.
    page.get_by_text("Estimated duration").first.wait_for(timeout=3 * TIMEOUT_MS)
    page.get_by_role("heading", name="Comparison").wait_for()
    page.get_by_role("heading", name="Evaluation on the validation split").wait_for()
    settle(page)
    assert page.locator(".js-plotly-plot").count() >= 4  # two curves and a confusion matrix per run
    # A button per run to convert to TFLite float32, its label saying how long that takes ("TFLite float32 · ~3 s").
    assert page.get_by_role("button", name=re.compile(r"^TFLite float32 · ~")).count() == 2
    no_exception(page)
    shoot(page, "3-experiments")

    go(page, "Predict")
    page.get_by_text("Loaded from disk").or_(page.get_by_text("Reused from the shared cache")).first.wait_for()
    image = next((demo_folder / "circles").iterdir())
    expected = predict_bytes(load_for_prediction(trained_runs["mobilenet_v2"]), [(image.name, image.read_bytes())])[0]
    page.locator("input[type=file]").first.set_input_files(str(image))
    page.get_by_role("heading", name=expected.label, exact=True).wait_for()
    settle(page)
    assert page.get_by_text(f"{expected.confidence:.1%} confident").count() == 1
    no_exception(page)
    shoot(page, "4-predict")

    page.get_by_role("button", name="Explain").click()
    page.get_by_text("Red: hiding this part", exact=False).wait_for()
    settle(page)
    assert page.locator(".js-plotly-plot").count() == 2  # the probabilities and the heatmap
    no_exception(page)
    shoot(page, "5-predict-explained")


def test_predict_on_a_phone(browser, server, demo_folder, trained_runs):
    """A 390-px phone screen: the sidebar starts collapsed, the camera comes before the uploader and the verdict
    before the picture, and nothing is wider than the screen. The screenshot is 6-predict-phone.png."""
    from core.runs.predict import load_for_prediction, predict_bytes

    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    try:
        phone = context.new_page()
        phone.set_default_timeout(TIMEOUT_MS)
        phone.goto(f"{server}/predict")
        phone.get_by_text("Loaded from disk").or_(phone.get_by_text("Reused from the shared cache")).first.wait_for()
        settle(phone)
        assert phone.get_by_test_id("stSidebar").get_attribute("data-collapsed") == "true"
        camera = phone.get_by_text("Take a photo with the camera").bounding_box()
        uploader = phone.get_by_test_id("stFileUploader").bounding_box()
        assert camera["y"] < uploader["y"]
        image = next((demo_folder / "squares").iterdir())
        expected = predict_bytes(load_for_prediction(trained_runs["mobilenet_v2"]),
                                 [(image.name, image.read_bytes())])[0]
        phone.locator("input[type=file]").first.set_input_files(str(image))
        verdict = phone.get_by_role("heading", name=expected.label, exact=True)
        verdict.wait_for()
        settle(phone)
        no_exception(phone)
        picture = phone.get_by_test_id("stImage").last.bounding_box()
        assert verdict.bounding_box()["y"] < picture["y"]
        assert picture["width"] <= 390
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        shoot(phone, "6-predict-phone")
    finally:
        context.close()


def test_hostile_run_and_upload_names_show_as_text_and_run_no_script(page, trained_runs, tmp_path_factory):
    from hostile_files import XSS_CLASSES, XSS_KIND, hostile_run

    runs = tmp_path_factory.mktemp("hostile-runs")
    hostile_run(trained_runs["baseline"], runs)
    with start_server(runs, name="streamlit-hostile-server") as url:
        page.goto(f"{url}/experiments")
        page.get_by_role("heading", name="Comparison").wait_for()
        settle(page)
        no_exception(page)
        assert page.get_by_text(XSS_KIND, exact=True).count() >= 1  # the model kind, literally
        assert page.evaluate("window.__xss") is None
        assert page.locator("[data-testid=stMain] iframe[srcdoc], img[src=x]").count() == 0

        go(page, "Predict")
        page.get_by_text("Loaded from disk").or_(page.get_by_text("Reused from the shared cache")).first.wait_for()
        upload_name = '<img src=x onerror="window.__xss=\'upload\'">.png'
        page.locator("input[type=file]").first.set_input_files(
            {"name": upload_name, "mimeType": "image/png", "buffer": _tiny_png()})
        page.get_by_text("confident").first.wait_for()
        settle(page)
        no_exception(page)
        main = page.get_by_test_id("stMain").inner_text()
        assert all(name in main for name in XSS_CLASSES)  # the .h5's class names, literally
        assert page.evaluate("window.__xss") is None
        assert page.locator("[data-testid=stMain] iframe[srcdoc], img[src=x]").count() == 0
        shoot(page, "6-hostile-names")


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()
