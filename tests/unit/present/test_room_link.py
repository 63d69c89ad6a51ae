"""The join link: the app's own address, never a session's key, a page's path or a frame's."""
from __future__ import annotations

import pytest

from core.present.room import images_per_class, join_link, only_this_machine, qr_png

PAGES = ("home", "room", "predict")


@pytest.mark.parametrize("url, link", [
    ("http://10.0.0.5:8501/home?s=abcdef#x", "http://10.0.0.5:8501/"),
    ("http://10.0.0.5:8501/", "http://10.0.0.5:8501/"),
    ("http://10.0.0.5:8501", "http://10.0.0.5:8501/"),
    ("https://lab.example.org/workshop/room?s=k", "https://lab.example.org/workshop/"),
    ("https://lab.example.org/workshop/", "https://lab.example.org/workshop/"),  # a base path is kept
    ("https://my-lab.streamlit.app/~/+/home?s=k", "https://my-lab.streamlit.app/"),  # Community Cloud's frame
    ("javascript:alert(1)", None),
    ("http://user:pass@10.0.0.5:8501/", None),
    ("file:///etc/passwd", None),
    (None, None),
    ("http://10.0.0.5/" + "a" * 3000, None),
])
def test_the_join_link_is_the_apps_address_only(url, link):
    assert join_link(url, PAGES) == link


def test_a_link_to_this_machine_only_is_told_apart():
    assert only_this_machine("http://localhost:8501/") and only_this_machine("http://127.0.0.1:8501/")
    assert only_this_machine("http://[::1]:8501/")
    assert not only_this_machine("http://192.168.1.20:8501/")


def test_the_qr_code_is_a_png():
    assert qr_png("http://10.0.0.5:8501/").startswith(b"\x89PNG\r\n\x1a\n")


def test_images_per_class_reads_as_one_number_or_a_range():
    assert images_per_class((60, 60)) == "60" and images_per_class((40, 1200)) == "40-1,200"
    assert images_per_class(None) == "-"
