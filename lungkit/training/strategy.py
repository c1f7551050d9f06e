"""Where and in what precision lungkit trains: `tf.distribute` strategies and dtype policies.

`get_strategy(name)` picks a `tf.distribute.Strategy` by name ("auto" looks at the machine:
a TPU, `TF_CONFIG` workers, several GPUs); `set_precision(name)` sets the global Keras dtype
policy and returns the previous one. `is_chief` tells the worker that writes files.
`check_jit` refuses XLA where it fails: under a mirrored strategy over several replicas
(`fit` crashes: "Trying to access resource ... located in device CPU:1 from device CPU:0",
TF 2.21 / Keras 3; Keras' own `jit_compile="auto"` turns XLA off under `tf.distribute`),
and in the multi-worker loop, which does not compile with XLA.
"""

import json
import logging
import os

import keras
import tensorflow as tf

from lungkit.checks import PRECISIONS, STRATEGIES

logger = logging.getLogger(__name__)

# Environment variables that announce a TPU (Colab / Cloud TPU VMs). "auto" only asks the
# TPU resolver when one is set: on other machines it would query the GCE metadata server.
TPU_ENV_VARS = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE")


def _tpu_strategy():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ValueError(f"`strategy='tpu'` but no TPU was found ({error}). Use 'auto', "
                         "'cpu' or 'mirrored' on this machine.") from error
    return tf.distribute.TPUStrategy(resolver)


def _mirrored_strategy():
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    # Without GPUs MirroredStrategy() would use CPU:0 alone; CPUs split into logical devices
    # (tf.config.set_logical_device_configuration) are mirrored over, as in the tests.
    devices = [d.name for d in gpus] if gpus else [d.name for d in cpus]
    return tf.distribute.MirroredStrategy(devices=devices)


def _tf_config_workers():
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def get_strategy(name="auto"):
    """Returns a `tf.distribute.Strategy` by name.

    Args:
        name: one of `STRATEGIES`, or a Strategy (returned as is).
            "auto": a TPU when the environment announces one (`TPU_ENV_VARS`), multi-worker
            when `TF_CONFIG` lists several workers, mirrored with more than one GPU, else the
            default (single-device) strategy. "cpu": one CPU device. "mirrored": all GPUs (or
            all logical CPUs). "multiworker": `MultiWorkerMirroredStrategy` from `TF_CONFIG`.
            "tpu": `TPUStrategy`, error when there is none.
    """
    if isinstance(name, tf.distribute.Strategy):
        return name
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
    if name == "auto":
        if any(os.environ.get(var) for var in TPU_ENV_VARS):
            try:
                return _tpu_strategy()
            except ValueError as error:
                logger.warning("TPU announced but not usable, falling back: %s", error)
        if _tf_config_workers() > 1:
            name = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            return tf.distribute.get_strategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "mirrored":
        return _mirrored_strategy()
    if name == "multiworker":
        if _tf_config_workers() < 1:
            logger.warning("strategy='multiworker' without TF_CONFIG: one worker only")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy()


def set_precision(name="float32"):
    """Sets the global Keras dtype policy; returns the previous policy's name.

    Affects models built afterwards. "mixed_float16" (GPUs with tensor cores) computes in
    float16 with float32 weights; "mixed_bfloat16" (TPUs, recent CPUs/GPUs) in bfloat16.
    Loss scaling for float16 is automatic (see the module docstring).
    """
    if name not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}. Received: precision={name!r}")
    previous = keras.config.dtype_policy().name
    keras.mixed_precision.set_global_policy(name)
    return previous


def check_jit(strategy, jit):
    """Raises ValueError when `jit` (XLA) is asked for under a strategy where it cannot run.

    Called before a model is built or data are read, so a refused run costs nothing.

    Args:
        strategy: a `tf.distribute.Strategy`.
        jit: the `jit` / `jit_compile` setting (only True is checked; "auto" is Keras' own).
    """
    if jit is not True:
        return
    replicas = strategy.num_replicas_in_sync
    if isinstance(strategy, tf.distribute.MirroredStrategy) and replicas > 1:
        raise ValueError(
            f"`jit=True` (--jit) cannot run under MirroredStrategy with {replicas} replicas: "
            "XLA-compiled train steps fail in fit() there (\"Trying to access resource ... "
            "located in device CPU:1 from device CPU:0\"). Train without jit (drop --jit) or "
            "on one device (strategy='cpu', or a single GPU).")
    if is_multiworker(strategy):
        raise ValueError(
            "`jit=True` (--jit) does not apply to strategy='multiworker': its training loop "
            "(distributed_fit) does not compile with XLA. Train without jit (drop --jit).")


def is_multiworker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy):
    """True on the worker that writes checkpoints and logs (task 0, or the "chief" task)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief
