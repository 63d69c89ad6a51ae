"""SavedModel backbones: only the operations of an image feature extractor pass (core.safety.savedmodel_ops).

The Lab's own backbones, saved the way the Lab saves them, must pass; graphs that list files, talk to a
server or call themselves are refused with the operation named, without running any of it."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.safety.model_files import check_savedmodel
from core.settings.errors import ModelFileError


def demo_backbone_network(path: Path) -> Path:
    """The demo's pretrained backbone as core.models.demo_backbone saves it, before its training (which
    changes its weights, not its operations)."""
    from core.data.demo import save_feature_extractor
    from core.models.demo_backbone import _network

    extractor, _classifier = _network(20)
    save_feature_extractor(extractor, path, (None, None, 3))
    return path


def mobilenet_v2(path: Path) -> Path:
    """tf_keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg"), as the Lab saves it."""
    from core.data.demo import make_mobilenet_backbone

    return make_mobilenet_backbone(path, image_size=96)


def test_the_tests_stand_in_backbone_is_accepted(demo_backbone):
    check_savedmodel(demo_backbone)


@pytest.mark.parametrize("build", [demo_backbone_network, mobilenet_v2], ids=["demo-backbone", "mobilenet-v2"])
def test_the_labs_backbones_are_accepted(build, tmp_path):
    check_savedmodel(build(tmp_path / "backbone"))


def save_module(path: Path, body) -> Path:
    """A feature extractor of 32x32 images that also runs body() (whose result is multiplied by 0)."""
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, axis=[1, 2]) + tf.cast(body(), tf.float32) * 0.0

    tf.saved_model.save(Module(), str(path))
    return path


def list_files():
    import tensorflow as tf

    files = tf.raw_ops.MatchingFilesDataset(patterns=tf.constant(["/usr/**"]))
    return tf.raw_ops.DatasetCardinality(input_dataset=files)


def ask_a_server():
    import tensorflow as tf

    remote = tf.data.experimental.service.from_dataset_id(
        processing_mode="parallel_epochs", service="grpc://192.0.2.1:5000", dataset_id="d",
        element_spec=tf.TensorSpec([], tf.float32))
    return tf.raw_ops.DatasetCardinality(input_dataset=remote._variant_tensor)


@pytest.mark.parametrize("body, op", [(list_files, "MatchingFilesDataset"), (ask_a_server, "DataServiceDatasetV4")],
                         ids=["lists-files", "asks-a-server"])
def test_file_and_network_operations_are_refused_by_name(body, op, tmp_path):
    path = save_module(tmp_path / "sneaky", body)
    with pytest.raises(ModelFileError) as refused:
        check_savedmodel(path)
    message = str(refused.value)
    assert message == (f"The SavedModel 'sneaky' contains a {op} operation, which is not among the operations of an "
                       "image feature extractor; refusing to load it.")
    assert str(tmp_path) not in message


def test_a_function_that_calls_itself_is_refused(demo_backbone, tmp_path):
    import shutil

    from tensorflow.core.protobuf import saved_model_pb2

    path = tmp_path / "recursive"
    shutil.copytree(demo_backbone, path)
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library
    [call] = [f for f in library.function if "__call__" in f.signature.name and not f.signature.name.startswith("__inference_signature")]
    node = call.node_def.add(name="again", op="PartitionedCall")
    node.attr["f"].func.name = call.signature.name
    (path / "saved_model.pb").write_bytes(saved.SerializeToString())
    with pytest.raises(ModelFileError, match=r"^The SavedModel 'recursive' has a function that calls itself"):
        check_savedmodel(path)
