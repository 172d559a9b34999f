"""Vision Transformer (Dosovitskiy et al., 2020) laid out like torchvision's VisionTransformer.

The image is cut into non-overlapping patches by a strided convolution, a
learned class token is prepended, a learned position embedding is added, and
pre-LayerNorm transformer blocks (self-attention, then an exact-GELU MLP) process
the sequence. The class token's final (LayerNorm-ed) state feeds the `head`.

Parameter names follow torchvision, so `jaxdl.convert.vit` maps them one to one:
`conv_proj`, `class_token`, `pos_embedding`, `encoder_layer_<i>/{ln_1,
self_attention/{in_proj,out_proj}, ln_2, mlp_0, mlp_3}`, `encoder_ln`, `head`.

With `scan_layers=True` the blocks are one `nn.scan` over the layer axis: a
single `encoder_layers/...` entry whose arrays have a leading `num_layers` axis
replaces the `encoder_layer_<i>` ones. XLA then compiles one block instead of
`num_layers` copies. `stack_layers` and `unstack_layers` turn one layout into
the other exactly (for params, and for any tree that mirrors them, such as
Adam's moments); they live here because the layout is this model's, and both
`jaxdl.convert` and checkpoint tooling may depend on models, not the reverse.

Where layouts meet: `config.init_from` (a torchvision state dict) fills either
layout, the importer stacking each block's tensors for a scanned model. A jaxdl
checkpoint is not converted on restore: a resume continues the run its workdir
was made with, and a layout change is a change of model. To continue a looped
run scanned, restore its checkpoint tree, pass it (params and optimizer state
together) through `stack_layers`, and start the scanned run from that tree.
"""

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.models.layers import Conv, StochasticDepth, remat, remat_policy
from jaxdl.models.registry import Check, at_least_one, positive, probability, register

# torchvision's ViT LayerNorm epsilon.
_LN_EPS = 1e-6
# Patch size of the CIFAR (32x32) stem: an 8x8 grid of tokens.
CIFAR_PATCH_SIZE = 4
# The scanned stack's name, and the looped blocks' names.
SCANNED_LAYERS = "encoder_layers"
_LOOPED_LAYER = re.compile(r"encoder_layer_(\d+)")


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection, like torch's nn.MultiheadAttention.

    `in_proj` maps the embedding to [q; k; v] (3 x hidden features, in that order);
    each head takes a contiguous slice of hidden_dim / num_heads features.
    """

    num_heads: int
    attention_dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Self-attention over the sequence axis of (batch, length, hidden) input."""
        batch, length, hidden = x.shape
        if hidden % self.num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by num_heads={self.num_heads}")
        head_dim = hidden // self.num_heads
        qkv = nn.Dense(
            3 * hidden,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.zeros,
            name="in_proj",
        )(x)
        qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = q * jnp.asarray(1.0 / np.sqrt(head_dim), q.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        # Softmax in float32 even under bfloat16 compute.
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.attention_dropout, deterministic=not train)(weights)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, hidden)
        return nn.Dense(hidden, dtype=self.dtype, bias_init=nn.initializers.zeros, name="out_proj")(out)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), each branch with stochastic depth."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, rate: jax.Array | None = None) -> jax.Array:
        """Return the block's output, the same shape as `x`.

        `rate`: this layer's stochastic depth rate as data, from a scanned stack
        (whose layers share one definition); `stochastic_depth_rate` then only
        says whether any layer drops (0: none).
        """
        hidden = x.shape[-1]
        dense_init = dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(1e-6))
        y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="ln_1")(x)
        y = SelfAttention(self.num_heads, self.attention_dropout, dtype=self.dtype, name="self_attention")(y, train)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        x = x + StochasticDepth(self.stochastic_depth_rate)(y, train, rate)

        y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="ln_2")(x)
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_0", **dense_init)(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = nn.Dense(hidden, dtype=self.dtype, name="mlp_3", **dense_init)(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return x + StochasticDepth(self.stochastic_depth_rate)(y, train, rate)


def _config(patch_size: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int, **extra: Any) -> dict:
    return dict(
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        **extra,
    )


@register("vit_b_16", **_config(16, 12, 12, 768, 3072))
@register("vit_b_32", **_config(32, 12, 12, 768, 3072))
@register("vit_l_16", **_config(16, 24, 16, 1024, 4096))
# DeiT/timm's ViT-Ti/16 and ViT-S/16 widths on torchvision's layout.
@register("vit_ti_16", **_config(16, 12, 3, 192, 768))
@register("vit_s_16", **_config(16, 12, 6, 384, 1536))
# A tiny variant for tests: 32x32 images, 8x8 patches, two narrow blocks.
@register("vit_mini", **_config(8, 2, 2, 32, 64, image_size=32))
class ViT(nn.Module):
    """Vision Transformer classifier for NHWC images of exactly `image_size` x `image_size` pixels.

    Attributes:
      num_outputs: number of classes.
      image_size: input resolution; fixes the position embedding's length to
        (image_size / patch_size)^2 + 1 tokens (the grid plus the class token).
      patch_size: side of the square patches (the stride of `conv_proj`).
      num_layers, num_heads, hidden_dim, mlp_dim: transformer depth and widths.
      dropout_rate: dropout after the position embedding, after attention and in the MLP.
      attention_dropout: dropout on the attention weights.
      stochastic_depth_rate: stochastic depth; block i (of L) drops its residual
        branches with probability stochastic_depth_rate * i / (L - 1) while training
        (0 turns it off, as in torchvision).
      cifar_stem: embed 4x4 patches instead of `patch_size` ones, the usual
        choice for 32x32 images (an 8x8 token grid). A CIFAR config sets
        `image_size=32, patch_size=4` (or, equivalently, `image_size=32,
        cifar_stem=True`); the position embedding must match the input size,
        so `image_size=32` is needed either way.
      features_only: return {patch size: the final (LayerNorm-ed) patch tokens
        as a (batch, image_size / p, image_size / p, hidden_dim) grid} instead of
        logits; the class token is dropped and no `head` is built.
      scan_layers: run the encoder blocks as one `nn.scan` (params under
        `encoder_layers` with a leading layer axis; dropout keys split per
        layer). Faster to compile; convert checkpoints of the default looped
        layout with `stack_layers` / `unstack_layers`.
      remat: rematerialise each block in the backward pass: "none", "full"
        (save only block inputs) or "dots_saveable" / "dots_with_no_batch_dims_saveable"
        (also keep matmul outputs); see `jaxdl.models.layers.remat`.
      dtype: compute dtype; parameters stay float32.
    """

    num_outputs: int
    image_size: int = 224
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072
    dropout_rate: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth_rate: float = 0.0
    cifar_stem: bool = False
    features_only: bool = False
    scan_layers: bool = False
    remat: str = "none"
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {
        "image_size": positive,
        "patch_size": positive,
        "num_layers": at_least_one,
        "num_heads": at_least_one,
        "hidden_dim": positive,
        "mlp_dim": positive,
        "dropout_rate": probability,
        "attention_dropout": probability,
        "stochastic_depth_rate": probability,
        "remat": remat_policy,
    }

    def _rate(self, i: int) -> float:
        """Stochastic depth rate of block i: linear from 0 to stochastic_depth_rate."""
        return self.stochastic_depth_rate * i / max(self.num_layers - 1, 1)

    def _encoder(self, x: jax.Array, train: bool) -> jax.Array:
        """The encoder blocks, looped (`encoder_layer_<i>`) or scanned (`encoder_layers`)."""
        block = remat(EncoderBlock, self.remat, static_argnums=(2,), scanned=self.scan_layers)
        shared = dict(dropout_rate=self.dropout_rate, attention_dropout=self.attention_dropout, dtype=self.dtype)
        if not self.scan_layers:
            for i in range(self.num_layers):
                layer = block(
                    self.num_heads,
                    self.mlp_dim,
                    stochastic_depth_rate=self._rate(i),
                    name=f"encoder_layer_{i}",
                    **shared,
                )
                x = layer(x, train)
            return x
        stack = nn.scan(
            lambda module, carry, rate: (module(carry, train, rate), None),
            variable_axes={"params": 0},
            # Each layer its own init and its own dropout / stochastic depth draws.
            split_rngs={"params": True, "dropout": True},
            in_axes=0,
            length=self.num_layers,
        )
        layers = block(
            self.num_heads,
            self.mlp_dim,
            stochastic_depth_rate=self.stochastic_depth_rate,
            name=SCANNED_LAYERS,
            **shared,
        )
        rates = jnp.asarray([self._rate(i) for i in range(self.num_layers)], jnp.float32)
        x, _ = stack(layers, x, rates)
        return x

    def fast_init(self, rngs, *args, **kwargs) -> dict:
        """`init` made through the scanned layout, returned in this model's layout (jaxdl's fast init).

        XLA compiles one random-fill kernel per parameter tensor; the scanned
        twin has one block's tensors instead of `num_layers` blocks' (vit_b_16:
        init compile 4.9 -> 2.2 s). Each layer still draws its own values
        (`split_rngs`), and a looped and a scanned run of one seed start from
        the same weights.
        """
        if self.scan_layers:
            return self.init(rngs, *args, **kwargs)
        return unstack_layers(self.clone(scan_layers=True).init(rngs, *args, **kwargs))

    @property
    def effective_patch_size(self) -> int:
        """The patch side actually used: 4 with the CIFAR stem, else `patch_size`."""
        return CIFAR_PATCH_SIZE if self.cifar_stem else self.patch_size

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[int, jax.Array]:
        """Logits of shape (batch, num_outputs) for NHWC input, or {patch size: token grid} with `features_only`."""
        p = self.effective_patch_size
        if self.image_size % p:
            raise ValueError(f"image_size={self.image_size} is not divisible by the patch size {p}")
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"ViT expects {self.image_size}x{self.image_size} images (its position embedding is sized for "
                f"image_size={self.image_size}), got {x.shape[1]}x{x.shape[2]}"
            )
        x = Conv(
            self.hidden_dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            name="conv_proj",
        )(x)
        batch = x.shape[0]
        # Row-major over the patch grid, as torch's reshape of the NCHW map.
        x = x.reshape(batch, -1, self.hidden_dim)
        class_token = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden_dim))
        x = jnp.concatenate([jnp.broadcast_to(class_token.astype(x.dtype), (batch, 1, self.hidden_dim)), x], axis=1)
        seq_length = (self.image_size // p) ** 2 + 1
        pos_embedding = self.param("pos_embedding", nn.initializers.normal(0.02), (1, seq_length, self.hidden_dim))
        x = x + pos_embedding.astype(x.dtype)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = self._encoder(x, train)
        x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="encoder_ln")(x)
        if self.features_only:
            grid = self.image_size // p
            return {p: x[:, 1:].reshape(batch, grid, grid, self.hidden_dim)}
        # torchvision zero-initialises the classifier.
        return nn.Dense(
            self.num_outputs,
            dtype=self.dtype,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            name="head",
        )(x[:, 0])


def _map_mappings(tree: Any, fn) -> Any:
    """`tree` with `fn` applied to every mapping in it, innermost first (through tuples, namedtuples and lists)."""
    if isinstance(tree, Mapping):
        return fn({k: _map_mappings(v, fn) for k, v in tree.items()})
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # An optax state (a namedtuple).
        return type(tree)(*(_map_mappings(v, fn) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map_mappings(v, fn) for v in tree)
    return tree


def _stack_one(node: dict) -> dict:
    layers = {int(m.group(1)): key for key in node if (m := _LOOPED_LAYER.fullmatch(key))}
    if not layers:
        return node
    if sorted(layers) != list(range(len(layers))) or SCANNED_LAYERS in node:
        raise ValueError(
            f"cannot stack encoder layers {sorted(layers)}: expected encoder_layer_0..N-1 and no {SCANNED_LAYERS}"
        )
    out = {key: value for key, value in node.items() if not _LOOPED_LAYER.fullmatch(key)}
    blocks = [node[layers[i]] for i in range(len(layers))]
    out[SCANNED_LAYERS] = jax.tree.map(lambda *xs: _xp(xs).stack(xs), *blocks)
    return out


def _unstack_one(node: dict) -> dict:
    if SCANNED_LAYERS not in node:
        return node
    out = {key: value for key, value in node.items() if key != SCANNED_LAYERS}
    stacked = node[SCANNED_LAYERS]
    for i in range(jax.tree.leaves(stacked)[0].shape[0]):
        out[f"encoder_layer_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return out


def _xp(arrays) -> Any:
    """numpy for host arrays (a checkpoint read on the host stays there), else jax.numpy."""
    return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def stack_layers(tree: Any) -> Any:
    """A looped ViT tree (`encoder_layer_<i>` entries) in the scanned layout (`encoder_layers`, leading layer axis).

    Works on variables ({'params': ...}), bare params, or anything that mirrors
    them (an optimizer state), at any depth; exact (a copy, no arithmetic).
    """
    return _map_mappings(tree, _stack_one)


def unstack_layers(tree: Any) -> Any:
    """The inverse of `stack_layers`: a scanned ViT tree in the looped layout."""
    return _map_mappings(tree, _unstack_one)
