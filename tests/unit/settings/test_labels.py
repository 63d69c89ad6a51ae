"""Honest names: the transfer model is named after the backbone it really uses; the article's lines as the article's."""
import pytest

from core.settings.config import MOBILENET_V2_HANDLE, ModelKind, model_label, plain_label, short_handle
from core.settings.reference import article_headline_label, article_label


@pytest.mark.parametrize("handle", [
    MOBILENET_V2_HANDLE,
    "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5",
    "https://www.kaggle.com/models/google/mobilenet-v2/TensorFlow2/100-224-feature-vector/2",
    "google/mobilenet-v2/tensorFlow2/tf2-preview-feature-vector/4",
])
def test_mobilenet_v2_only_for_googles_mobilenet_v2_module(handle):
    assert model_label(ModelKind.TRANSFER, handle) == "MobileNetV2 transfer"


@pytest.mark.parametrize(("handle", "label"), [
    ("/home/me/.cache/transfer-learning-lab/demo/backbone-v1", "Transfer (backbone-v1)"),
    ("https://tfhub.dev/google/imagenet/efficientnet_v2_imagenet1k_b0/feature_vector/2",
     "Transfer (efficientnet_v2_imagenet1k_b0)"),
    ("https://example.com/models/mobilenet_v2/feature_vector/4", "Transfer (mobilenet_v2)"),  # not Google's
    ("/tmp/<img src=x onerror=alert(1)>", "Transfer (_img_src_x_onerror_alert_1__)"),
])
def test_other_backbones_are_named_by_their_handle(handle, label):
    assert model_label(ModelKind.TRANSFER, handle) == label


def test_a_named_backbone_names_the_model_and_the_baseline_is_always_the_baseline():
    assert model_label(ModelKind.TRANSFER, "/x/backbone-v1", "Demo backbone (pretrained on synthetic shapes)") == \
        "Demo backbone (pretrained on synthetic shapes) transfer"
    assert model_label(ModelKind.BASELINE, MOBILENET_V2_HANDLE) == "Baseline CNN"
    assert model_label(ModelKind.TRANSFER, MOBILENET_V2_HANDLE) == "MobileNetV2 transfer"
    assert model_label(ModelKind.TRANSFER) == "Transfer model"  # before its backbone is known


def test_names_read_from_files_must_be_plain_words():
    assert plain_label("Transfer (backbone-v1)") == "Transfer (backbone-v1)"
    for hostile in ("<b>x</b>", "[x](javascript:alert(1))", "x" * 101, "", 3, None):
        assert plain_label(hostile) is None
    assert len(short_handle("/x/" + "a" * 80)) == 40


def test_the_articles_figures_are_labelled_as_the_articles():
    assert article_label(ModelKind.TRANSFER) == "Article: MobileNetV2 transfer"
    assert article_headline_label(ModelKind.TRANSFER) == "Article: MobileNetV2 98%"
    assert article_headline_label(ModelKind.BASELINE) == "Article: Baseline CNN 88%"
