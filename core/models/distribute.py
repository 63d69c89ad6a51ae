"""Choosing a tf.distribute strategy: one CPU, several GPUs or a TPU, with the same experiment code.

Models, optimizers and feature extraction are created inside `strategy.scope()`; the global batch is the
per-replica batch times the number of replicas, so each device sees the batch size the user asked for and
one run's updates match a single-device run with the global batch.

A model built under a MirroredStrategy or TPUStrategy holds distributed variables, and a hub.KerasLayer
restored under one refuses to run outside its replicas ("executing a graph generated from the
cross-replica context in an in-replica context"), so the backbone's features are computed through
`replica_batches` and a finished model is used elsewhere by reloading its .h5.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from core.settings.errors import LabError

logger = logging.getLogger(__name__)


AUTO, DEFAULT, MIRRORED, TPU, MULTIWORKER = STRATEGY_NAMES = ("auto", "default", "mirrored", "tpu", "multiworker")
# Environment variables through which Cloud TPU set-ups name their TPU (read by TPUClusterResolver).
TPU_ENV_VARIABLES = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG")
MIXED_POLICY = "mixed_float16"


@dataclass(frozen=True)
class StrategyChoice:
    strategy: object
    kind: str  # what is actually used: DEFAULT, MIRRORED, TPU or MULTIWORKER
    replicas: int  # across every worker
    devices: tuple[str, ...]  # this process's
    workers: tuple[str, ...] = ()  # multiworker: every training task's host:port, the chief first

    @property
    def uses_gpu(self) -> bool:
        return any("GPU" in d.upper() for d in self.devices)

    def global_batch_size(self, per_replica: int) -> int:
        return per_replica * self.replicas


@dataclass(frozen=True)
class Precision:
    mixed: bool  # whether layers compute in float16 (variables and the output stay float32)
    note: str  # why not, when it was asked for and is not used; empty otherwise


# Strategies are made once per process: initialising the TPU system again resets it, and a second
# MirroredStrategy over the same devices breaks the first one's all-reduces (see _mirrored).
_tpu_lock = threading.Lock()
_tpu_strategy = None
_mirrored_lock = threading.Lock()
_mirrored_strategies: dict[tuple[str, ...], object] = {}


def _tpu_hinted() -> bool:
    """Whether this machine says it has a TPU, checked without any network call."""
    return any(os.environ.get(v) for v in TPU_ENV_VARIABLES) or Path("/dev/accel0").exists()


def _connect_tpu():
    import tensorflow as tf

    global _tpu_strategy
    with _tpu_lock:
        if _tpu_strategy is None:
            named = any(os.environ.get(v) for v in TPU_ENV_VARIABLES)
            # No name in the environment: a TPU VM whose chips are attached to this host.
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=None if named else "local")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            _tpu_strategy = tf.distribute.TPUStrategy(resolver)
        return _tpu_strategy


def _tpu_choice() -> StrategyChoice:
    import tensorflow as tf

    if not _tpu_hinted():
        raise LabError("No TPU was found: set TPU_NAME to your TPU's name (or run on a TPU VM), or use "
                       "--strategy auto to train on the GPUs or CPU here.")
    try:
        strategy = _connect_tpu()
    except Exception as exc:
        raise LabError(f"The TPU could not be connected ({exc.__class__.__name__}: {str(exc)[:200]}). Check "
                       "TPU_NAME, or use --strategy auto to train on the GPUs or CPU here.") from None
    devices = tuple(d.name for d in tf.config.list_logical_devices("TPU"))
    return StrategyChoice(strategy, TPU, strategy.num_replicas_in_sync, devices)


def _mirrored(devices: tuple[str, ...]):
    """One MirroredStrategy per device set and process: a second one starts its collective instance keys
    where the first one did, and its all-reduces then fail with "Shape mismatch in the collective instance"."""
    import tensorflow as tf

    with _mirrored_lock:
        if devices not in _mirrored_strategies:
            try:
                _mirrored_strategies[devices] = tf.distribute.MirroredStrategy(devices=list(devices))
            except Exception as exc:
                raise LabError(f"MirroredStrategy could not be set up on {', '.join(devices) or 'this machine'} "
                               f"({exc.__class__.__name__}: {str(exc)[:200]}); use --strategy default.") from None
        return _mirrored_strategies[devices]


def choose_strategy(kind: str = AUTO) -> StrategyChoice:
    """The strategy to train under.

    auto: a TPU if this machine names one, MirroredStrategy over the GPUs when there are more than one,
    otherwise the default strategy (one device). mirrored: all GPUs, or every logical CPU device when there
    is no GPU (one device is fine). tpu: the TPU or a LabError. multiworker: the workers of TF_CONFIG, each
    with its GPUs or CPU (core.models.cluster; joined first thing in the process). An explicit choice that
    cannot be honoured raises LabError; auto never does.
    """
    import tensorflow as tf

    if kind not in STRATEGY_NAMES:
        raise LabError(f"Unknown strategy '{kind}'; use one of {', '.join(STRATEGY_NAMES)}.")
    if kind == TPU:
        return _tpu_choice()
    if kind == MULTIWORKER:
        from core.models.cluster import join

        strategy = join().strategy
        return StrategyChoice(strategy, MULTIWORKER, strategy.num_replicas_in_sync,
                              tuple(strategy.extended.worker_devices), join().cluster.addresses)
    if kind == AUTO and _tpu_hinted():
        try:
            return _tpu_choice()
        except LabError as exc:
            logger.warning("%s Falling back to the GPUs or CPU.", exc)
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if kind == MIRRORED or (kind == AUTO and len(gpus) > 1):
        devices = gpus or cpus
        strategy = _mirrored(tuple(devices))
        return StrategyChoice(strategy, MIRRORED, strategy.num_replicas_in_sync, tuple(devices))
    return StrategyChoice(tf.distribute.get_strategy(), DEFAULT, 1, tuple(gpus[:1] or cpus[:1]))


def split_cpu(n: int) -> None:
    """Present the CPU as n logical devices, so MirroredStrategy can run n replicas without a GPU.

    Must run before TensorFlow initialises its devices (before any op runs); raises LabError otherwise.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
        raise LabError("The CPU can only be split before TensorFlow has started; do it first thing in the "
                       "process.") from None


def choose_precision(requested: bool, choice: StrategyChoice, supported: bool = True) -> Precision:
    """Mixed precision only where it pays: float16 is fast on GPUs and slow on CPUs (and TPUs use bfloat16).

    supported is False for models that cannot compute in float16 (a hub module's SavedModel has a fixed
    float32 signature).
    """
    if not requested:
        return Precision(False, "")
    if not choice.uses_gpu:
        return Precision(False, "mixed precision was asked for but is only used on GPUs; trained in float32")
    if not supported:
        return Precision(False, "mixed precision was asked for, but the hub module computes in float32 "
                                "(its SavedModel's fixed signature); trained in float32")
    return Precision(True, "")


@contextlib.contextmanager
def precision_policy(mixed: bool):
    """Build models under mixed_float16 when asked, and restore the previous global policy afterwards.

    The policy is process-wide: a model built in another thread meanwhile would pick it up, which is why
    mixed precision is only used by the command line's one-run-per-process training.
    """
    if not mixed:
        yield
        return
    import tf_keras

    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(MIXED_POLICY)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)


def describe(choice: StrategyChoice, per_replica_batch: int, precision: Precision) -> dict:
    """What a run directory's config.json records under "distribution"."""
    out = {"kind": choice.kind, "replicas": choice.replicas, "devices": list(choice.devices),
           "per_replica_batch_size": per_replica_batch,
           "global_batch_size": choice.global_batch_size(per_replica_batch),
           "mixed_precision": precision.mixed}
    if choice.workers:
        out["workers"] = list(choice.workers)
    if precision.note:
        out["note"] = precision.note
    return out


def replica_batches(strategy, fn, dataset):
    """Yield (fn(x), y) for each (x, y) batch, every batch split across the replicas and gathered back.

    The pieces come back in replica order, which is the batch's own order, so labels stay with their
    outputs.
    """
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def step(x, y):
        out, labels = strategy.run(lambda a, b: (fn(a), b), args=(x, y))
        return strategy.gather(out, axis=0), strategy.gather(labels, axis=0)

    for x, y in strategy.experimental_distribute_dataset(dataset):
        yield step(x, y)
