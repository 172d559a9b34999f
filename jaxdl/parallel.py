"""Device mesh, shardings, and the two ways of running a step: jit over a Mesh, or pmap.

Both strategies take the same pure step functions. Under `jit` the mesh has
two axes, ("data", "fsdp"); the batch is one global array sharded over both
and XLA inserts the collectives, so BatchNorm sees the global batch. With an
`fsdp` axis larger than 1 the state is sharded ZeRO-3 style over it (rules in
`fsdp_spec`), else replicated. Under `pmap` each device runs the step on its
slice and the step itself averages gradients and syncs BatchNorm over the
`batch` axis name: the strategy traces the step inside
`jaxdl.models.layers.batch_norm_axis`, so models never carry the axis name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdl.errors import ConfigError, check_at_least, check_choice
from jaxdl.models.layers import batch_norm_axis

PMAP_AXIS = "batch"
# The mesh axes, both batch axes: inputs split over their product, state over "fsdp".
MESH_AXES = ("data", "fsdp")


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


def make_mesh(num_devices: int = 0, *, data: int = 0, fsdp: int = 1) -> Mesh:
    """A ("data", "fsdp") mesh of shape (data, fsdp) over all devices, or the first `num_devices` (one process only).

    `data=0` takes every device the `fsdp` axis leaves. Devices are laid out in
    `jax.devices()` order, data-major, so one process's devices form a
    contiguous block of the flattened (data, fsdp) batch axis, as
    `jax.make_array_from_process_local_data` needs.
    """
    devices = jax.devices()
    check_at_least("parallel.num_devices", num_devices, 0)
    check_at_least("mesh.data", data, 0)
    check_at_least("mesh.fsdp", fsdp, 1)
    if num_devices:
        if jax.process_count() > 1:
            raise ConfigError("config.parallel.num_devices must be 0 in a multi-process run")
        if num_devices > len(devices):
            raise ConfigError(
                f"config.parallel.num_devices={num_devices} is not valid; only {len(devices)} "
                f"device{'s' if len(devices) > 1 else ''} exist{'' if len(devices) > 1 else 's'} here"
            )
        devices = devices[:num_devices]
    count = len(devices)
    which = f"config.parallel.num_devices={num_devices}" if num_devices else "every device"
    if not data:
        if count % fsdp:
            raise ConfigError(f"config.mesh.fsdp={fsdp} does not divide the {count} devices of the run ({which})")
        data = count // fsdp
    if data * fsdp != count:
        raise ConfigError(
            f"config.mesh: data={data} x fsdp={fsdp} = {data * fsdp} devices, but the run has {count} ({which}); "
            "set config.mesh.data=0 to use every device the fsdp axis leaves"
        )
    # Auto axes: XLA propagates the shardings (make_mesh's default, Explicit, would change jit's semantics).
    return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def build_mesh(
    config: ml_collections.ConfigDict, batch_size: int, mesh: ml_collections.ConfigDict | None = None
) -> Mesh:
    """The mesh of a `parallel` config and a `mesh` config (None: data parallel only).

    The global `batch_size` must split evenly over the mesh.
    """
    check_choice("parallel.strategy", config.strategy, ("jit", "pmap"))
    sizes = {} if mesh is None else {"data": mesh.data, "fsdp": mesh.fsdp}
    mesh = make_mesh(config.num_devices, **sizes)
    check_at_least("training.batch_size", batch_size, 1)
    if batch_size % mesh.size:
        raise ConfigError(
            f"config.training.batch_size={batch_size} is not divisible by the "
            f"{mesh.size} devices; choose a multiple of {mesh.size}"
        )
    return mesh


def fit_mesh_for_evaluation(config: ml_collections.ConfigDict) -> str | None:
    """Makes a saved run config's mesh one this machine can form; returns why it changed it, or None.

    Evaluation gives the same metrics on any mesh, so a run trained on a mesh
    this machine cannot form (fsdp=8 over 8 GPUs, evaluated on a laptop) is
    evaluated data-parallel over the devices here. The checkpoint restores onto
    any mesh (orbax reshards).
    """
    try:
        make_mesh(config.parallel.num_devices, data=config.mesh.data, fsdp=config.mesh.fsdp)
        return None
    except ConfigError as error:
        if 0 < config.parallel.num_devices <= len(jax.devices()) and config.mesh.fsdp == 1 and not config.mesh.data:
            raise  # Nothing to fall back from.
        config.mesh.data, config.mesh.fsdp = 0, 1
        if not 0 < config.parallel.num_devices <= len(jax.devices()):
            config.parallel.num_devices = 0
        return str(error)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 0) -> P:
    """The ZeRO-3 partition of one state array: its largest dimension divisible by `fsdp_size` over "fsdp".

    Arrays with fewer than `min_size` elements, and arrays no dimension of which
    `fsdp_size` divides, stay replicated (P()). Among equally large dimensions the
    last is taken (the output features of a dense or conv kernel). The rule
    depends on the shape alone, so an optimizer moment or an EMA copy of a
    parameter is sharded exactly like the parameter.
    """
    if fsdp_size <= 1 or math.prod(shape) < max(min_size, 1):
        return P()
    divisible = [(size, axis) for axis, size in enumerate(shape) if size % fsdp_size == 0]
    if not divisible:
        return P()
    axis = max(divisible)[1]
    return P(*(None,) * axis, "fsdp")


def check_fsdp(mesh: Mesh, params, model_name: str) -> None:
    """Raises ConfigError when the mesh's fsdp size divides no dimension of any parameter (nothing could shard)."""
    fsdp = mesh.shape.get("fsdp", 1)
    if fsdp <= 1:
        return
    if not any(size % fsdp == 0 for leaf in jax.tree.leaves(params) for size in np.shape(leaf)):
        raise ConfigError(
            f"config.mesh.fsdp={fsdp} divides no parameter dimension of {model_name}; "
            "choose a divisor of a parameter dimension, or config.mesh.fsdp=1"
        )


def _synced(step: Callable) -> Callable:
    """`step` with axis_name set, traced where BatchNorm averages its statistics over the devices."""

    @functools.wraps(step)
    def traced(*args):
        with batch_norm_axis(PMAP_AXIS):
            return step(*args, axis_name=PMAP_AXIS)

    return traced


class JitStrategy:
    """One jitted step over the mesh: batch split over ("data", "fsdp"), state sharded over "fsdp".

    With an fsdp axis of size 1 the state is replicated (pure data parallelism).
    Otherwise every state array is sharded by `fsdp_spec` (ZeRO-3): params,
    optimizer moments and any other copy of the params alike, as the rule
    reads shapes only; XLA's partitioner inserts the all-gathers of the
    parameters where the step uses them and the reductions of their gradients.

    Args:
      mesh: a ("data", "fsdp") mesh from `make_mesh` (a 1-D "data" mesh also works).
      fsdp_min_size: arrays with fewer elements stay replicated (config.mesh.fsdp_min_size).
    """

    axis_name = None

    def __init__(self, mesh: Mesh, fsdp_min_size: int = 0):
        self.mesh = mesh
        self.fsdp_size = mesh.shape.get("fsdp", 1)
        self.fsdp_min_size = fsdp_min_size
        self.replicated = NamedSharding(mesh, P())
        batch_axes = tuple(axis for axis in MESH_AXES if axis in mesh.axis_names)
        self.batch_sharding = NamedSharding(mesh, P(batch_axes))

    def place_batch(self, batch: dict) -> dict:
        """Builds global arrays from this process's share of the batch."""
        if jax.process_count() == 1:
            return jax.device_put(batch, self.batch_sharding)  # One call for all leaves: cheaper.
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)

    def put_state(self, tree):
        """Places a state (host or device arrays) on the mesh with `state_shardings`."""
        return jax.device_put(tree, self.state_shardings(tree))

    def put_replicated(self, tree):
        """Places small values (evaluation totals) whole on every device."""
        return jax.device_put(tree, self.replicated)

    def state_shardings(self, tree):
        """The sharding of every leaf of a state (arrays or shape structs), for placing and restoring.

        Generic over the tree: whatever a checkpoint holds (params, optimizer
        state, EMA params, the step) gets the sharding its shape calls for.
        """
        return jax.tree.map(
            lambda x: NamedSharding(self.mesh, fsdp_spec(np.shape(x), self.fsdp_size, self.fsdp_min_size)), tree
        )

    def host_state(self, tree):
        """The state as checkpointable global arrays (already so under jit)."""
        return tree

    def compile_train(self, step: Callable) -> Callable:
        """jit with the state donated: its buffers are reused for the new state.

        The state comes in with the shardings `put_state` gave it; the new state
        is constrained to the same `state_shardings` (computed from the traced
        shapes, so no state structure is needed here), which makes them the
        step's output shardings and lets the donated buffers be reused.
        """

        def sharded(state, batch, rng):
            state, metrics = step(state, batch, rng)
            state = jax.lax.with_sharding_constraint(state, self.state_shardings(state))
            return state, jax.lax.with_sharding_constraint(metrics, self.replicated)

        sharded.__name__ = sharded.__qualname__ = getattr(step, "__name__", "train_step")  # Names the HLO module.
        return jax.jit(sharded, donate_argnums=0)

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

    def put_replicated(self, tree):
        """Small values (evaluation totals): one copy per device, as every state array."""
        return self.put_state(tree)

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


def make_strategy(name: str, mesh: Mesh, *, fsdp_min_size: int = 0) -> JitStrategy | PmapStrategy:
    """The strategy named by config.parallel.strategy; `fsdp_min_size` is config.mesh.fsdp_min_size."""
    check_at_least("mesh.fsdp_min_size", fsdp_min_size, 0)
    if name == "jit":
        return JitStrategy(mesh, fsdp_min_size)
    if name == "pmap":
        fsdp = mesh.shape.get("fsdp", 1)
        if fsdp > 1:
            raise ConfigError(
                f"config.mesh.fsdp={fsdp} needs config.parallel.strategy='jit'; pmap keeps a whole state per device"
            )
        return PmapStrategy(mesh)
    raise ConfigError(f"config.parallel.strategy='{name}' is not valid; choose one of: jit, pmap")
