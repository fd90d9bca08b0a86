# pyright: basic
"""How training spreads over devices and hosts: the tf.distribute strategy, its replicas, and the
learning-rate scaling that goes with the global batch.

Strategies (``edgekit train --strategy``):

- ``auto``: ``MirroredStrategy`` over the local GPUs when there are any, else the default strategy.
- ``mirrored``: ``MirroredStrategy`` over the local GPUs, or over ``--cpu-replicas N`` logical CPU
  devices when there are none (that is how the multi-replica path is tested without a GPU).
- ``multiworker``: ``MultiWorkerMirroredStrategy`` over several hosts. The cluster comes from
  ``--workers HOST:PORT,HOST:PORT --worker-index N`` (edgekit writes ``TF_CONFIG``) or from a
  ``TF_CONFIG`` already set in the environment. Every worker runs the same ``edgekit train``
  command with the same ``--out`` folder on a disk they share (as TensorFlow's BackupAndRestore
  expects): the chief (worker 0) writes the run folder and its checkpoints, worker N its own
  checkpoints to ``RUN/checkpoints/worker-N/``, and ``--resume`` restarts every worker from the
  chief's last checkpoint, so they always agree on the epoch.

``--batch-size`` is the **global** batch: each of R replicas sees batch/R images per step, so a run
gives the same updates whatever R is. With ``--lr-scaling linear`` the learning rate is
multiplied by batch/32 (32 is the recipe's batch), the usual rule when a bigger machine is used to
take bigger batches.

TensorFlow is imported inside the functions: the CLI's ``--help`` must stay light.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, cast

from edgekit.errors import EdgekitError

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
LR_SCALINGS = ("none", "linear")
REFERENCE_BATCH = 32  # the recipe's batch size, which its learning rate was set for


@dataclass
class Distribution:
    """The strategy a run uses and what it means for batch and learning rate."""

    strategy: Any
    name: str
    replicas: int
    workers: int = 1
    worker_index: int = 0

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    def record(self, global_batch: int, lr: float, lr_scaling: str) -> dict[str, Any]:
        """What the run folder records about the distribution (manifest ``training.distribution``)."""
        return {
            "strategy": self.name,
            "replicas": self.replicas,
            "workers": self.workers,
            "worker_index": self.worker_index,
            "global_batch": global_batch,
            "per_replica_batch": global_batch / self.replicas,
            "lr": lr,
            "lr_scaling": lr_scaling,
            "lr_effective": scaled_lr(lr, global_batch, lr_scaling),
        }


def scaled_lr(lr: float, global_batch: int, mode: str) -> float:
    """The learning rate for a global batch: unchanged, or linear in batch / 32."""
    if mode not in LR_SCALINGS:
        raise EdgekitError(f"unknown learning-rate scaling {mode!r}: use one of {', '.join(LR_SCALINGS)}")
    return lr * global_batch / REFERENCE_BATCH if mode == "linear" else lr


def cluster_spec(workers: str, worker_index: int) -> dict[str, Any]:
    """``TF_CONFIG`` for ``--workers HOST:PORT,... --worker-index N``, checked."""
    hosts = [w.strip() for w in workers.split(",") if w.strip()]
    if len(hosts) < 2:
        raise EdgekitError("--workers needs at least two HOST:PORT entries, separated by commas")
    for h in hosts:
        host, _, port = h.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise EdgekitError(f"--workers entry {h!r} is not HOST:PORT")
    if len(set(hosts)) != len(hosts):
        raise EdgekitError("--workers lists the same HOST:PORT twice")
    if not 0 <= worker_index < len(hosts):
        raise EdgekitError(f"--worker-index must be 0..{len(hosts) - 1} for {len(hosts)} workers")
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": worker_index}}


def environment_cluster() -> dict[str, Any] | None:
    """The ``TF_CONFIG`` already set in the environment, checked, or None."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        hosts = spec["cluster"]["worker"]
        index = int(spec["task"]["index"])
        if spec["task"].get("type", "worker") not in ("worker", "chief") or not hosts:
            raise ValueError
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgekitError('TF_CONFIG is set but is not a worker cluster ({"cluster": {"worker": '
                           '[...]}, "task": {"type": "worker", "index": N}})') from exc
    if not 0 <= index < len(hosts):
        raise EdgekitError(f"TF_CONFIG task index {index} is outside its {len(hosts)} workers")
    return spec


def split_cpu(replicas: int) -> None:
    """Split the CPU into ``replicas`` logical devices; must run before TensorFlow uses the CPU."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError as exc:  # already initialized: only fine if it already has that many
        if len(tf.config.list_logical_devices("CPU")) != replicas:
            raise EdgekitError("cannot split the CPU into logical devices after TensorFlow started") from exc


def make_distribution(kind: str = "auto", cpu_replicas: int = 1, workers: str | None = None,
                      worker_index: int | None = None) -> Distribution:
    """The strategy for ``kind`` (see the module docstring)."""
    if kind not in STRATEGIES:
        raise EdgekitError(f"unknown strategy {kind!r}: use one of {', '.join(STRATEGIES)}")
    if workers and kind not in ("auto", "multiworker"):
        raise EdgekitError(f"--workers needs --strategy multiworker, not {kind}")
    if (workers is None) != (worker_index is None):
        raise EdgekitError("--workers and --worker-index go together")
    # worker_index comes with workers (checked above)
    spec = cluster_spec(workers, cast(int, worker_index)) if workers else None
    if kind == "multiworker" or spec is not None:
        spec = spec or environment_cluster()
        if spec is None:
            raise EdgekitError("--strategy multiworker needs --workers HOST:PORT,... --worker-index N "
                               "or TF_CONFIG")
        return _multiworker(spec)
    if cpu_replicas < 1:
        raise EdgekitError("--cpu-replicas must be at least 1")
    import tensorflow as tf

    if cpu_replicas > 1:
        split_cpu(cpu_replicas)
    gpus = tf.config.list_physical_devices("GPU")
    if kind == "default" or (kind == "auto" and not gpus and cpu_replicas == 1):
        return Distribution(tf.distribute.get_strategy(), "default strategy (CPU)" if not gpus
                            else "default strategy (one device)", 1)
    if gpus:
        strategy = tf.distribute.MirroredStrategy()
        return Distribution(strategy, f"MirroredStrategy over {len(gpus)} GPU(s)",
                            strategy.num_replicas_in_sync)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    return Distribution(strategy, f"MirroredStrategy over {len(devices)} logical CPU device(s)",
                        strategy.num_replicas_in_sync)


def _multiworker(spec: dict[str, Any]) -> Distribution:
    os.environ["TF_CONFIG"] = json.dumps(spec)
    import tensorflow as tf

    hosts = spec["cluster"]["worker"]
    index = int(spec["task"]["index"])
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, RuntimeError) as exc:
        raise EdgekitError(f"could not join the worker cluster {','.join(hosts)}: {exc}") from exc
    return Distribution(strategy, f"MultiWorkerMirroredStrategy over {len(hosts)} workers",
                        strategy.num_replicas_in_sync, workers=len(hosts), worker_index=index)


def synchronize_batch_norm(model: Any) -> int:
    """Make every BatchNormalization layer use statistics of the global batch (all replicas).

    Without it each replica normalizes with its own slice's statistics, so R replicas train a
    different model than one device with the same global batch. Returns how many layers changed.
    """
    import keras

    changed = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            changed += 1
    return changed


def patch_for_multiworker(model: Any) -> None:
    """Work around Keras 3's fit under MultiWorkerMirroredStrategy (keras-team/keras#20585, still
    open in Keras 3.15), which fails twice before the first step:

    - its up-front symbolic build reduces a multi-worker batch it cannot reduce: without the
      model's own strategy Keras builds at trace time instead, and the strategy in scope around
      ``fit`` is the one its train and predict functions use;
    - it reduces every per-replica log with ``reduce("MEAN", v, axis=0)``, which rejects scalars:
      the logs get a leading axis of one, so that reduction is the mean over replicas.
    """
    import tensorflow as tf

    model._distribute_strategy = None
    step = model.train_step

    def train_step(data):
        return {k: tf.reshape(v, [1]) for k, v in step(data).items()}

    model.train_step = train_step
