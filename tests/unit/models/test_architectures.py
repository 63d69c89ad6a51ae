"""The article's two models: layer for layer, parameter counts, what trains and what stays frozen."""
from __future__ import annotations

import numpy as np
import pytest
from lab_helpers import saved_functions

from core.models.architectures import (
    build_baseline,
    build_model,
    build_transfer,
    compile_model,
    param_counts,
    summary_rows,
    summary_text,
)
from core.settings.config import ModelKind
from core.settings.errors import ModelFileError
from core.settings.reference import article_params


def test_baseline_matches_the_article_layer_for_layer():
    model = build_baseline(num_classes=2, image_size=224)
    assert param_counts(model) == (9_679_554, 9_679_554)
    assert article_params(ModelKind.BASELINE) == 9_679_554
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPooling2D"] * 4 + ["Dropout", "Flatten", "Dense", "Dense"]
    assert [layer.filters for layer in model.layers if type(layer).__name__ == "Conv2D"] == [32, 64, 128, 128]
    assert model.output_shape == (None, 2)
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits, as the article's loss expects


def test_baseline_adapts_to_image_size_and_classes():
    model = build_baseline(num_classes=5, image_size=64)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 5)
    out = model(np.zeros((2, 64, 64, 3), np.float32))
    assert out.shape == (2, 5)


def test_transfer_model_trains_only_its_dense_layer(demo_backbone):
    model = build_transfer(num_classes=2, image_size=64, handle=str(demo_backbone))
    hub_layer, dense = model.layers
    assert type(hub_layer).__name__ == "KerasLayer" and not hub_layer.trainable
    assert type(dense).__name__ == "Dense"
    total, trainable = param_counts(model)
    backbone_params = 5 * 5 * 3 * 32 + 32
    dense_params = 64 * 2 + 2  # the demo backbone returns 64 features
    assert (total, trainable) == (backbone_params + dense_params, dense_params)
    assert {w.name for w in model.trainable_weights} == {w.name for w in dense.weights}
    assert len(hub_layer.non_trainable_weights) == 2


def test_frozen_backbone_does_not_change_when_fitted(demo_backbone):
    model = build_transfer(num_classes=2, image_size=32, handle=str(demo_backbone))
    compile_model(model, 1e-2)
    before = [w.numpy().copy() for w in model.layers[0].weights]
    dense_before = model.layers[1].kernel.numpy().copy()
    x = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    model.fit(x, np.arange(16) % 2, epochs=2, batch_size=8, verbose=0)
    for b, w in zip(before, model.layers[0].weights):
        np.testing.assert_array_equal(b, w.numpy())
    assert not np.array_equal(dense_before, model.layers[1].kernel.numpy())


def test_transfer_with_mobilenet_v2_shape_has_the_articles_parameter_counts(tmp_path):
    from core.data.demo import make_mobilenet_backbone

    handle = make_mobilenet_backbone(tmp_path / "mobilenet_v2")
    model = build_model(ModelKind.TRANSFER, num_classes=2, image_size=224, handle=str(handle))
    assert param_counts(model) == (2_260_546, 2_562)  # the article's summary: 2,260,546 total, 2,562 trainable
    assert model.output_shape == (None, 2)
    # Saved as a published module is: __call__ and variables, not the Keras model's layers as well.
    assert saved_functions(handle) <= 2


def test_summaries_name_every_layer(demo_backbone):
    model = build_transfer(num_classes=3, image_size=32, handle=str(demo_backbone))
    rows = summary_rows(model)
    assert [(r.type, r.trainable) for r in rows] == [("KerasLayer", False), ("Dense", True)]
    assert rows[1].params == 64 * 3 + 3 and rows[1].output_shape == "(batch, 3)"
    text = summary_text(model)
    assert "feature_extractor" in text and "Trainable params: 195" in text
    baseline_text = summary_text(build_baseline(2, 224))
    assert "Total params: 9679554" in baseline_text.replace(",", "")


def test_handle_that_is_not_a_savedmodel_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="no saved_model.pb"):
        build_transfer(2, 64, str(tmp_path))
    with pytest.raises(ModelFileError, match="neither a URL nor an existing folder"):
        build_transfer(2, 64, str(tmp_path / "missing"))


def test_image_size_the_module_does_not_accept_is_a_clear_error(tmp_path):
    import tensorflow as tf

    class Fixed(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, axis=[1, 2])

    tf.saved_model.save(Fixed(), str(tmp_path / "fixed"))
    assert build_transfer(2, 32, str(tmp_path / "fixed")).output_shape == (None, 2)
    with pytest.raises(ModelFileError, match="could not be used with 48x48 RGB input"):
        build_transfer(2, 48, str(tmp_path / "fixed"))


def test_module_without_a_feature_vector_is_refused(tmp_path):
    import tensorflow as tf

    class Maps(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return images * 2.0

    tf.saved_model.save(Maps(), str(tmp_path / "maps"))
    with pytest.raises(ModelFileError, match="feature vector"):
        build_transfer(2, 32, str(tmp_path / "maps"))
