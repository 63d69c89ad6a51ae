"""One spec per model: every kind has one, and the article's figures in it agree with the shipped reference."""
import pytest

from core.settings.reference import article, article_history
from core.settings.specs import SPECS, ModelKind, spec


@pytest.mark.parametrize("kind", list(ModelKind))
def test_every_kind_has_one_spec_found_by_member_or_stored_value(kind):
    assert spec(kind) is spec(kind.value) is SPECS[kind] and spec(kind).kind is kind


@pytest.mark.parametrize("kind", list(ModelKind))
def test_the_specs_article_figures_match_the_reference_file(kind):
    assert spec(kind).reference_key in article()
    assert len(article_history(kind)) == spec(kind).article_epochs


def test_only_the_transfer_model_has_a_backbone_and_each_model_its_own_colour_and_key():
    assert [s.kind for s in SPECS.values() if s.has_backbone] == [ModelKind.TRANSFER]
    assert len({s.colour for s in SPECS.values()}) == len({s.key for s in SPECS.values()}) == len(ModelKind)
