"""Data efficiency: both models at several training-set sizes, for any folder and backbone."""
import pytest

from core.present.charts import data_efficiency_chart
from core.settings.config import DataConfig, ModelKind
from core.settings.errors import LabError
from core.settings.specs import spec
from core.training.efficiency import data_efficiency


def test_both_models_are_scored_at_each_count_on_the_whole_validation_split(demo_folder, demo_backbone):
    data = DataConfig(source=f"folder:{demo_folder}", image_size=48, batch_size=8)
    messages = []
    result = data_efficiency(data, str(demo_backbone), counts=(8, 2),
                             epochs={ModelKind.BASELINE: 1, ModelKind.TRANSFER: 10}, learning_rate=1e-2,
                             on_status=messages.append)
    assert result.val_images == 24  # 20% of 2 x 60 images, whatever the count
    assert result.class_names == ["circles", "squares"]
    assert result.epochs == {ModelKind.BASELINE: 1, ModelKind.TRANSFER: 10}
    for kind in ModelKind:
        assert [n for n, _ in result.accuracies(kind)] == [2, 8]
        assert all(0.0 <= acc <= 1.0 for _, acc in result.accuracies(kind))
    assert {p.train_images for p in result.points if p.per_class == 8} == {16}
    assert result.labels == {ModelKind.BASELINE: "Baseline CNN", ModelKind.TRANSFER: "Transfer (backbone)"}
    # The demo backbone separates these colours: its head is right on all but a few at 8 per class.
    assert dict(result.accuracies(ModelKind.TRANSFER))[8] >= 0.9
    assert any("features once" in m for m in messages)

    fig = data_efficiency_chart(result)
    assert [t.name for t in fig.data] == ["Baseline CNN", "Transfer (backbone)"]
    assert [t.line.color for t in fig.data] == [spec(ModelKind.BASELINE).colour, spec(ModelKind.TRANSFER).colour]
    assert list(fig.data[0].x) == [2, 8] and fig.layout.xaxis.type == "log"


def test_counts_must_be_positive(demo_folder, demo_backbone):
    with pytest.raises(LabError, match="count"):
        data_efficiency(DataConfig(source=f"folder:{demo_folder}", image_size=48), str(demo_backbone), counts=(0,))
