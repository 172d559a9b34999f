"""Recurrent networks: Elman RNN, LSTM and GRU, stacked, optionally bidirectional, with variable lengths.

The cells follow the course's equations, in PyTorch's formulation so that
`jaxdl.convert.recurrent` imports `torch.nn.RNN/LSTM/GRU` weights exactly
(sigma is the logistic sigmoid, * the elementwise product):

- Elman RNN: s_t = tanh(U x_t + b_ih + W s_{t-1} + b_hh).
- LSTM: i = sigma(W_xi x + W_hi h + b_i), f = sigma(W_xf x + W_hf h + b_f),
  g = tanh(W_xg x + W_hg h + b_g), o = sigma(W_xo x + W_ho h + b_o),
  c' = f * c + i * g, h' = o * tanh(c').
- GRU: r = sigma(W_ir x + b_ir + W_hr h + b_hr), z = sigma(W_iz x + b_iz + W_hz h + b_hz),
  n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.

Each direction of each layer holds four variables: `input_kernel` [F, G*H] and
`recurrent_kernel` [H, G*H] (the G gates fused side by side in PyTorch's order:
i, f, g, o for the LSTM; r, z, n for the GRU), `input_bias` and `recurrent_bias`
[G*H]. The input projection of all time steps is one matmul before the scan;
the scan itself does only the fused recurrent matmul h @ W_h and the gate
arithmetic. The backward pass is written by hand (see `_recurrence`) so that
the recurrent weight gradient is also one matmul over all steps. Layers are
named `layer_<k>` and, for the backward direction, `layer_<k>_reverse`, like
PyTorch's `_l<k>` / `_l<k>_reverse` suffixes.

Variable lengths: past a sequence's length the state is frozen, so the final
state is the one at the true last step; the backward direction runs over each
sequence's valid part only (a reverse scan whose state stays at zero until it
reaches the sequence's last valid step), so padding never enters either
direction. Outputs at padded steps are zero, as in PyTorch's `pad_packed_sequence`.
"""

import functools
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.models.registry import Check, at_least_one, non_negative, positive, probability, register

# Gates fused into one matrix per cell type.
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
OUTPUTS = ("last", "sequence")


def _uniform(bound: float):
    """PyTorch's recurrent-layer init: U(-bound, bound) with bound = 1 / sqrt(hidden_size)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# The gate arithmetic of one step, given the matmul results. Elman RNN and LSTM
# depend on the input and recurrent projections only through their sum
# a = (x W_x + b_x + b_h) + h W_h; the GRU needs them apart (r scales W_hn h + b_hn).
def _rnn_step(a: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    return (jnp.tanh(a),)


def _lstm_step(a: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    i, f, g, o = jnp.split(a, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry[1] + jax.nn.sigmoid(i) * jnp.tanh(g)
    return (jax.nn.sigmoid(o) * jnp.tanh(c), c)


def _gru_step(x: jax.Array, hz: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    x_r, x_z, x_n = jnp.split(x, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(hz, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return ((1 - z) * n + z * carry[0],)


_STEPS = {"rnn": _rnn_step, "lstm": _lstm_step, "gru": _gru_step}


def _freeze(new: tuple[jax.Array, ...], old: tuple[jax.Array, ...], valid: jax.Array | None) -> tuple[jax.Array, ...]:
    """The new state where `valid`, else the old one (past a sequence's length)."""
    if valid is None:
        return new
    return tuple(jnp.where(valid, a, b) for a, b in zip(new, old, strict=True))


def _previous(states: jax.Array, t: jax.Array, reverse: bool) -> jax.Array:
    """The state before step t in processing order: states[t - 1] (states[t + 1] if reverse), zero at the start."""
    prev = t + 1 if reverse else t - 1
    inside = (prev >= 0) & (prev < states.shape[0])
    value = jax.lax.dynamic_index_in_dim(states, jnp.clip(prev, 0, states.shape[0] - 1), keepdims=False)
    return jnp.where(inside, value, jnp.zeros((), states.dtype))


@functools.cache
def _recurrence(cell: str, reverse: bool, unroll: int):
    """`run(w_h, b_x, b_h, xs, mask) -> (outputs [T, B, H], final h [B, H])`, with a hand-written backward pass.

    xs [T, B, G*H] are the precomputed input projections x W_x (without bias),
    mask [T, B, 1] or None, b_x the input bias (for the Elman RNN and LSTM, the
    sum of both biases) and b_h the GRU's recurrent bias (None for the other
    cells). The biases are added inside the step, where the add fuses with the
    gate arithmetic, rather than in an extra pass over the [T, B, G*H] array.

    The forward pass is a scan doing h @ W_h and the gate arithmetic per step.
    The backward pass is a reverse scan that only does the per-step work (the
    gates' derivatives, recomputed from the saved pre-activations, and
    dz @ W_h^T); the weight gradient sum_t h_{t-1}^T dz_t is then one large
    matmul over all steps, instead of T small ones accumulated inside the loop
    as plain autodiff of the scan does (which measured about 15% slower on CPU).
    Forward-mode differentiation (jax.jvp) of this function is not supported.
    """
    step = _STEPS[cell]
    additive = cell != "gru"

    def forward(w_h, b_x, b_h, xs, mask, save: bool):
        batch, hidden = xs.shape[1], w_h.shape[0]
        zeros = jnp.zeros((batch, hidden), xs.dtype)
        carry0 = (zeros, zeros) if cell == "lstm" else (zeros,)

        def body(carry, inputs):
            x_t, valid = inputs
            x_t = x_t + b_x
            hz = jnp.dot(carry[0], w_h)
            if b_h is not None:
                hz = hz + b_h
            saved = x_t + hz if additive else hz
            new = _freeze(step(saved, carry) if additive else step(x_t, hz, carry), carry, valid)
            return new, ((new, saved) if save else new[0])

        return jax.lax.scan(body, carry0, (xs, mask), reverse=reverse, unroll=unroll)

    @jax.custom_vjp
    def run(w_h, b_x, b_h, xs, mask):
        carry, outputs = forward(w_h, b_x, b_h, xs, mask, save=False)
        return outputs, carry[0]

    def run_fwd(w_h, b_x, b_h, xs, mask):
        carry, (states, saved) = forward(w_h, b_x, b_h, xs, mask, save=True)
        return (states[0], carry[0]), (w_h, b_x, b_h, None if additive else xs, mask, states, saved)

    def run_bwd(residuals, cotangents):
        w_h, b_x, b_h, xs, mask, states, saved = residuals
        d_outputs, d_last = cotangents
        w_h_t = w_h.T

        def body(d_carry, inputs):
            t, saved_t, x_t, d_out, valid = inputs
            prev = tuple(_previous(s, t, reverse) for s in states)
            d_carry = (d_carry[0] + d_out,) + d_carry[1:]
            if additive:
                _, vjp = jax.vjp(lambda a, c: _freeze(step(a, c), c, valid), saved_t, prev)
                d_hz, d_prev = vjp(d_carry)
                d_x = None
            else:
                _, vjp = jax.vjp(lambda x, hz, c: _freeze(step(x, hz, c), c, valid), x_t + b_x, saved_t, prev)
                d_x, d_hz, d_prev = vjp(d_carry)
            d_prev = (d_prev[0] + jnp.dot(d_hz, w_h_t),) + d_prev[1:]
            return d_prev, (d_hz, d_x)

        d_carry0 = (d_last,) + tuple(jnp.zeros_like(s[0]) for s in states[1:])
        inputs = (jnp.arange(saved.shape[0]), saved, xs, d_outputs, mask)
        _, (d_hz, d_x) = jax.lax.scan(body, d_carry0, inputs, reverse=not reverse, unroll=unroll)
        # sum_t h_{t-1}^T dz_t as one matmul (h before the first step is zero).
        hs = states[0]
        zero = jnp.zeros_like(hs[:1])
        h_prev = jnp.concatenate([hs[1:], zero]) if reverse else jnp.concatenate([zero, hs[:-1]])
        d_w_h = jnp.dot(
            h_prev.reshape(-1, h_prev.shape[-1]).T, d_hz.reshape(-1, d_hz.shape[-1]), preferred_element_type=jnp.float32
        )
        d_xs = d_hz if additive else d_x
        d_b_x = jnp.sum(d_xs, axis=(0, 1), dtype=jnp.float32).astype(b_x.dtype)
        d_b_h = None if b_h is None else jnp.sum(d_hz, axis=(0, 1), dtype=jnp.float32).astype(b_h.dtype)
        return d_w_h.astype(w_h.dtype), d_b_x, d_b_h, d_xs, None

    run.defvjp(run_fwd, run_bwd)
    return run


class RecurrentLayer(nn.Module):
    """One direction of one recurrent layer over a time-major sequence.

    `__call__(x, mask)` takes x [T, B, F] and an optional validity mask [T, B]
    and returns (outputs [T, B, H], final hidden state [B, H]).
    """

    cell: str = "lstm"
    hidden_size: int = 64
    reverse: bool = False
    unroll: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Run the cell over x [T, B, F] (backwards if `reverse`); see the class docstring."""
        hidden, gates = self.hidden_size, GATES[self.cell]
        num_steps, batch, features = x.shape
        init = _uniform(1.0 / math.sqrt(hidden))
        w_x = self.param("input_kernel", init, (features, gates * hidden), jnp.float32)
        w_h = self.param("recurrent_kernel", init, (hidden, gates * hidden), jnp.float32)
        b_x = self.param("input_bias", init, (gates * hidden,), jnp.float32)
        b_h = self.param("recurrent_bias", init, (gates * hidden,), jnp.float32)
        # The GRU's recurrent bias stays apart (b_hn is scaled by r); the others add both biases to the input.
        b_x, b_h = (b_x, b_h.astype(self.dtype)) if self.cell == "gru" else (b_x + b_h, None)
        # All time steps' input projections in one matmul, outside the sequential loop.
        projected = jnp.dot(x.reshape(num_steps * batch, features).astype(self.dtype), w_x.astype(self.dtype))
        projected = projected.reshape(num_steps, batch, gates * hidden)
        run = _recurrence(self.cell, self.reverse, self.unroll)
        mask = None if mask is None else mask[:, :, None]
        outputs, last = run(w_h.astype(self.dtype), b_x.astype(self.dtype), b_h, projected, mask)
        if mask is not None:
            outputs = jnp.where(mask, outputs, jnp.zeros((), outputs.dtype))
        return outputs, last


@register("rnn", cell="rnn")
@register("lstm", cell="lstm")
@register("gru", cell="gru")
class RecurrentNet(nn.Module):
    """Stacked (bidirectional) Elman RNN / LSTM / GRU with a Dense head; see the module docstring.

    Input: float features [B, T, F] ([B, T] is read as F = 1), or, with
    `vocab_size > 0`, integer token ids [B, T] (id 0 is padding and the lengths
    are the counts of non-zero ids; float ids are a TypeError), embedded by
    `embed`. `lengths` [B] marks each sequence's valid prefix.

    `output='last'`: the head sees the final hidden state of the last layer,
    [B, H] (for bidirectional, [forward final, backward final], [B, 2H]), and
    returns [B, num_outputs]. `output='sequence'`: the head sees every step's
    output, returning [B, T, num_outputs]. `num_outputs=0` means no head: the
    hidden features themselves are returned.
    """

    num_outputs: int
    cell: str = "lstm"
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    # Between stacked layers, as in PyTorch (not after the last layer).
    dropout_rate: float = 0.0
    # Time steps per iteration of the compiled loop (jax.lax.scan's unroll).
    unroll: int = 1
    output: str = "last"
    vocab_size: int = 0
    embed_dim: int = 32
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {
        "hidden_size": positive,
        "num_layers": at_least_one,
        "dropout_rate": probability,
        "unroll": at_least_one,
        "vocab_size": non_negative,
        "embed_dim": positive,
    }

    def __post_init__(self) -> None:
        """Validate the cell and output names at construction."""
        if self.cell not in GATES:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of: {', '.join(GATES)}")
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output {self.output!r}; choose one of: {', '.join(OUTPUTS)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, lengths: jax.Array | None = None) -> jax.Array:
        """Return [B, num_outputs] ('last') or [B, T, num_outputs] ('sequence'); see the class docstring."""
        if self.vocab_size > 0:
            ids = jnp.asarray(x)
            if not jnp.issubdtype(ids.dtype, jnp.integer):
                raise TypeError(f"token ids must be integers (vocab_size={self.vocab_size}); got {ids.dtype}")
            if lengths is None:
                lengths = jnp.sum(ids != 0, axis=1)
            x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embed")(ids)
        else:
            x = jnp.asarray(x)
            if x.ndim == 2:
                x = x[:, :, None]
        # Time-major inside: the scan runs over the leading axis.
        h = jnp.swapaxes(x.astype(self.dtype), 0, 1)
        num_steps = h.shape[0]
        mask = None if lengths is None else jnp.arange(num_steps)[:, None] < jnp.asarray(lengths)[None, :]
        directions = (False, True) if self.bidirectional else (False,)
        for k in range(self.num_layers):
            if k > 0 and self.dropout_rate > 0.0:
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
            outputs, finals = [], []
            for reverse in directions:
                layer = RecurrentLayer(
                    cell=self.cell,
                    hidden_size=self.hidden_size,
                    reverse=reverse,
                    unroll=self.unroll,
                    dtype=self.dtype,
                    name=f"layer_{k}_reverse" if reverse else f"layer_{k}",
                )
                out, final = layer(h, mask)
                outputs.append(out)
                finals.append(final)
            h = jnp.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
        if self.output == "last":
            features = jnp.concatenate(finals, axis=-1) if len(finals) > 1 else finals[0]
        else:
            features = jnp.swapaxes(h, 0, 1)
        if self.num_outputs == 0:
            return features
        return nn.Dense(self.num_outputs, dtype=self.dtype, name="head")(features)
