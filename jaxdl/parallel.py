"""Device mesh, shardings, and the two ways of running a step: jit over a Mesh, or pmap.

Both strategies take the same pure step functions. Under `jit` the batch is one
global array sharded over the `data` axis and XLA inserts the collectives, so
BatchNorm sees the global batch. Under `pmap` each device runs the step on its
slice and the step itself averages gradients and syncs BatchNorm over the
`batch` axis name: the strategy traces the step inside
`jaxdl.models.layers.batch_norm_axis`, so models never carry the axis name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdl.errors import ConfigError, check_at_least, check_choice
from jaxdl.models.layers import batch_norm_axis

PMAP_AXIS = "batch"


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins a multi-process run when `config.distributed` (a `parallel` config) is set.

    With `coordinator_address` empty, JAX detects the cluster (SLURM, Open MPI,
    Kubernetes, Cloud TPU); otherwise the address, process count and id are used
    as given, e.g. for several processes on one machine.
    """
    if not config.distributed or jax.distributed.is_initialized():
        return
    # Processes on CPUs exchange data through gloo; GPU and TPU backends ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if config.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
    else:
        jax.distributed.initialize()


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D `data` mesh over all devices, or over the first `num_devices` (one process only)."""
    devices = jax.devices()
    check_at_least("parallel.num_devices", num_devices, 0)
    if num_devices:
        if jax.process_count() > 1:
            raise ConfigError("config.parallel.num_devices must be 0 in a multi-process run")
        if num_devices > len(devices):
            raise ConfigError(
                f"config.parallel.num_devices={num_devices} is not valid; only {len(devices)} "
                f"device{'s' if len(devices) > 1 else ''} exist{'' if len(devices) > 1 else 's'} here"
            )
        devices = devices[:num_devices]
    return Mesh(np.array(devices), ("data",))


def build_mesh(config: ml_collections.ConfigDict, batch_size: int) -> Mesh:
    """The mesh of a `parallel` config; the global `batch_size` must split evenly over it."""
    check_choice("parallel.strategy", config.strategy, ("jit", "pmap"))
    mesh = make_mesh(config.num_devices)
    check_at_least("training.batch_size", batch_size, 1)
    if batch_size % mesh.size:
        raise ConfigError(
            f"config.training.batch_size={batch_size} is not divisible by the "
            f"{mesh.size} devices; choose a multiple of {mesh.size}"
        )
    return mesh


def _synced(step: Callable) -> Callable:
    """`step` with axis_name set, traced where BatchNorm averages its statistics over the devices."""

    @functools.wraps(step)
    def traced(*args):
        with batch_norm_axis(PMAP_AXIS):
            return step(*args, axis_name=PMAP_AXIS)

    return traced


class JitStrategy:
    """Replicated state, batch sharded over the mesh's `data` axis, one jitted step."""

    axis_name = None

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        self.batch_sharding = NamedSharding(mesh, P("data"))

    def place_batch(self, batch: dict) -> dict:
        """Builds global arrays from this process's share of the batch."""
        if jax.process_count() == 1:
            return jax.device_put(batch, self.batch_sharding)  # One call for all leaves: cheaper.
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)

    def put_state(self, tree):
        """Places a state (host or device arrays) replicated on the mesh."""
        return jax.device_put(tree, self.replicated)

    def state_shardings(self, tree):
        """Sharding of every state leaf, for restoring checkpoints straight onto the mesh."""
        return jax.tree.map(lambda _: self.replicated, tree)

    def host_state(self, tree):
        """The state as checkpointable global arrays (already so under jit)."""
        return tree

    def compile_train(self, step: Callable) -> Callable:
        """jit with the state donated: its buffers are reused for the new state."""
        return jax.jit(step, donate_argnums=0, out_shardings=(self.replicated, self.replicated))

    def compile_eval(self, step: Callable) -> Callable:
        """jit of an evaluation step; outputs are replicated scalars."""
        return jax.jit(step, out_shardings=self.replicated)

    def unreplicate_metrics(self, metrics):
        """Metrics are already global scalars."""
        return metrics


class PmapStrategy:
    """One state copy per device; the step runs per device under `jax.pmap`."""

    axis_name = PMAP_AXIS

    def __init__(self, mesh: Mesh):
        if jax.process_count() > 1:
            raise ConfigError("config.parallel.strategy='pmap' is supported in single-process runs; use 'jit'")
        self.mesh = mesh
        self.devices = list(mesh.devices.flat)
        self.stacked = NamedSharding(mesh, P("data"))

    def place_batch(self, batch: dict) -> dict:
        """Splits the batch into one slice per device along a new leading axis."""
        n = len(self.devices)
        return jax.tree.map(lambda x: jax.device_put(x.reshape(n, x.shape[0] // n, *x.shape[1:]), self.stacked), batch)

    def put_state(self, tree):
        """One copy of the state per device (a leading device axis)."""
        n = len(self.devices)
        return jax.tree.map(
            lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), self.stacked), tree
        )

    def state_shardings(self, tree):
        """Checkpoints restore onto the first device; put_state replicates them."""
        single = jax.sharding.SingleDeviceSharding(self.devices[0])
        return jax.tree.map(lambda _: single, tree)

    def host_state(self, tree):
        """The first device's copy: all copies are equal after each synced step."""
        return jax.tree.map(lambda x: x[0], tree)

    def compile_train(self, step: Callable) -> Callable:
        """pmap with the state donated; gradients are averaged inside the step."""
        return jax.pmap(
            _synced(step),
            axis_name=PMAP_AXIS,
            devices=self.devices,
            in_axes=(0, 0, None),
            donate_argnums=0,
        )

    def compile_eval(self, step: Callable) -> Callable:
        """pmap of an evaluation step; sums are psum-med inside the step."""
        return jax.pmap(_synced(step), axis_name=PMAP_AXIS, devices=self.devices)

    def unreplicate_metrics(self, metrics):
        """Every device holds the same reduced metrics: keep the first."""
        return jax.tree.map(lambda x: x[0], metrics)


def make_strategy(name: str, mesh: Mesh) -> JitStrategy | PmapStrategy:
    """The strategy named by config.parallel.strategy."""
    if name == "jit":
        return JitStrategy(mesh)
    if name == "pmap":
        return PmapStrategy(mesh)
    raise ConfigError(f"config.parallel.strategy='{name}' is not valid; choose one of: jit, pmap")
