"""Shapes of a model's variables, found by tracing alone (nothing compiled or allocated), and their sizes."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def input_dtype(model: nn.Module) -> jnp.dtype:
    """The dtype of the model's input: int32 token ids for a model with a vocabulary, else float32."""
    return jnp.dtype(jnp.int32 if getattr(model, "vocab_size", 0) > 0 else jnp.float32)


def abstract_variables(model: nn.Module, input_shape: tuple[int, ...], dtype: Any = None) -> dict:
    """The model's variables as ShapeDtypeStructs, from `jax.eval_shape` of its init.

    The input has `input_shape` and `dtype` (default: `input_dtype(model)`).
    """
    sample = jax.ShapeDtypeStruct(tuple(input_shape), dtype or input_dtype(model))
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), sample)


def default_input_shape(model: nn.Module) -> tuple[int, int, int, int]:
    """A one-image NHWC shape the model accepts: its `image_size` if it has one, else 224."""
    size = getattr(model, "image_size", None) or 224
    return (1, size, size, 3)


def count_params(tree: Any) -> int:
    """The number of scalars in a pytree of arrays or ShapeDtypeStructs (e.g. a params tree)."""
    return int(sum(np.prod(np.shape(leaf), dtype=np.int64) for leaf in jax.tree_util.tree_leaves(tree)))


__all__ = ["abstract_variables", "count_params", "default_input_shape", "input_dtype"]
