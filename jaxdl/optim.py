"""Optax optimizer and learning-rate schedule from the config; each builder checks its own keys."""

from __future__ import annotations

import re

import jax
import ml_collections
import optax

from jaxdl.errors import ConfigError, check_at_least, check_choice, check_fraction, check_regex


def path_name(path) -> str:
    """A pytree key path as a '/'-joined name, e.g. 'layer1_0/conv1/kernel'."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def trainable_mask(params, freeze: str):
    """True for params that train; False for those whose path matches the `freeze` regex."""
    pattern = re.compile(freeze) if freeze else None
    return jax.tree_util.tree_map_with_path(
        lambda path, _: pattern is None or not pattern.search(path_name(path)), params
    )


OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "step", "exponential")


def decay_mask(params):
    """True for weights that take weight decay: kernels, not biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def build_schedule(config: ml_collections.ConfigDict, num_updates: int) -> optax.Schedule:
    """Linear warmup to the peak, then constant, cosine or step decay.

    Args:
      config: the full experiment config (reads `optimizer` and `schedule`).
      num_updates: optimizer updates of the whole run (steps / grad_accum_steps).
    """
    peak = config.optimizer.learning_rate
    sched = config.schedule
    check_choice("schedule.name", sched.name, SCHEDULES)
    check_at_least("schedule.warmup_steps", sched.warmup_steps, 0)
    if sched.name == "exponential" and not 0 < sched.decay_every <= 1:
        raise ConfigError(
            f"config.schedule.decay_every={sched.decay_every} is not valid; it must be a fraction in (0, 1]"
        )
    # Checked whatever the schedule, as every key is: a value that no schedule could use is refused.
    boundaries = tuple(sched.decay_boundaries)
    if any(not 0 < b < 1 for b in boundaries) or any(b <= a for a, b in zip(boundaries, boundaries[1:], strict=False)):
        raise ConfigError(
            f"config.schedule.decay_boundaries={boundaries} is not valid; give increasing fractions in (0, 1)"
        )
    warmup = min(sched.warmup_steps, max(num_updates - 1, 0))
    remaining = max(num_updates - warmup, 1)
    if sched.name == "constant":
        main = optax.constant_schedule(peak)
    elif sched.name == "cosine":
        main = optax.cosine_decay_schedule(peak, decay_steps=remaining, alpha=sched.final_fraction)
    elif sched.name == "exponential":
        # Staircase decay by decay_factor every decay_every (a fraction of the run), as
        # EfficientNet's 0.97 every 2.4 epochs.
        every = max(round(sched.decay_every * num_updates), 1)
        main = optax.exponential_decay(peak, every, sched.decay_factor, staircase=True)
    elif sched.name == "step":
        # Boundaries are fractions of the whole run; the main schedule starts after warmup.
        boundaries = {max(round(b * num_updates) - warmup, 1): sched.decay_factor for b in sched.decay_boundaries}
        main = optax.piecewise_constant_schedule(peak, boundaries)
    else:
        raise ValueError(f"unknown schedule '{sched.name}'; choose one of: {', '.join(SCHEDULES)}")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def build_optimizer(
    config: ml_collections.ConfigDict, num_updates: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The configured optimizer and its schedule (the schedule is also logged)."""
    opt = config.optimizer
    check_choice("optimizer.name", opt.name, OPTIMIZERS)
    check_at_least("optimizer.learning_rate", opt.learning_rate, 0, strict=True)
    for key in ("weight_decay", "grad_clip_norm"):
        check_at_least(f"optimizer.{key}", opt[key], 0)
    check_at_least("optimizer.grad_accum_steps", opt.grad_accum_steps, 1)
    check_fraction("optimizer.momentum", opt.momentum)  # sgd's momentum, rmsprop's and nesterov's: in [0, 1).
    schedule = build_schedule(config, num_updates)
    if opt.name == "sgd":
        base = optax.sgd(schedule)
    elif opt.name == "momentum":
        base = optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov)
    elif opt.name == "adam":
        base = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "rmsprop":
        # TensorFlow-style RMSProp (eps inside the square root) with momentum.
        base = optax.rmsprop(schedule, decay=opt.b2, eps=opt.eps, momentum=opt.momentum, eps_in_sqrt=True)
    elif opt.name == "adamw":
        base = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
    else:
        raise ValueError(f"unknown optimizer '{opt.name}'; choose one of: {', '.join(OPTIMIZERS)}")
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.weight_decay > 0 and opt.name != "adamw":
        # L2 decay added to the gradient (coupled), as in classic SGD training recipes.
        parts.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
    tx = optax.chain(*parts, base) if parts else base
    freeze = config.transfer.freeze
    if check_regex("transfer.freeze", freeze):
        # Frozen params get zero updates and no optimizer state; the rest train as configured.
        tx = optax.multi_transform(
            {"train": tx, "frozen": optax.set_to_zero()},
            lambda params: jax.tree.map(lambda t: "train" if t else "frozen", trainable_mask(params, freeze)),
        )
    if opt.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=opt.grad_accum_steps)
    return tx, schedule
