"""A data source parsed once: its kind and value, and the same text back for storing."""
from hypothesis import given
from hypothesis import strategies as st

from core.settings.config import DEFAULT_SOURCE
from core.settings.source import Source
from core.settings.text import dataset_name


def test_a_source_is_its_kind_and_its_value():
    assert Source.parse(DEFAULT_SOURCE) == Source.tfds("cats_vs_dogs")
    assert Source.parse("folder:/data/pets") == Source.folder("/data/pets")
    assert Source.parse("folder:C:/data").value == "C:/data"  # only the first colon separates
    assert Source.parse("folder:/data/pets").is_folder and not Source.parse("folder:/x").is_tfds
    assert Source.parse("cats_vs_dogs") == Source("", "cats_vs_dogs")  # no kind: refused where it is opened
    assert Source.parse("s3:bucket").kind == "s3"


def test_its_name_is_the_tfds_name_or_the_folders_own():
    assert Source.parse("tfds:beans").name == "beans"
    assert Source.parse("folder:/data/pets/").name == "pets"
    assert Source.parse("folder:").name == "folder:"
    assert dataset_name("folder:/srv/uploads/abc-faces") == "abc-faces"


@given(st.text())
def test_the_text_comes_back_unchanged(text):
    """Run folders, the board and session state keep the text: parsing and printing never changes it."""
    assert str(Source.parse(text)) == text
    assert Source.parse(str(Source.parse(text))) == Source.parse(text)
