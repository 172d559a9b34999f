"""PyTorch `nn.RNN` / `nn.LSTM` / `nn.GRU` state dicts -> jaxdl `RecurrentNet` variables.

PyTorch's recurrent modules keep, for layer k and direction suffix '' or '_reverse',
`weight_ih_l{k}{sfx}` (G*H, F), `weight_hh_l{k}{sfx}` (G*H, H), `bias_ih_l{k}{sfx}`
and `bias_hh_l{k}{sfx}` (G*H), the gates stacked in the order jaxdl also uses
(i, f, g, o for the LSTM; r, z, n for the GRU). They map to
`params/layer_{k}{sfx}/{input_kernel, recurrent_kernel, input_bias, recurrent_bias}`
(kernels transposed). A torch module built with `bias=False` has no bias tensors;
the biases are then imported as zeros. Only `nn.RNN(nonlinearity='tanh')` (the
default) matches jaxdl's Elman cell.

A torch recurrent module has no head or embedding of its own; the state dict
may carry them as extra tensors `head.weight`/`head.bias` (an `nn.Linear`, needed
when `num_outputs > 0`) and `embed.weight` (an `nn.Embedding`, needed when
`vocab_size > 0`). `from_torch_rnn` assembles such a state dict from separate
pieces and picks the input shape from the weights:

    variables = from_torch_rnn(create_model("lstm", num_outputs=0, num_layers=2), torch_lstm.state_dict())
    variables = from_torch_rnn(model, torch_lstm.state_dict(), head=torch_linear)

With the extra tensors in one dict, `jaxdl.convert.from_torch(model, state_dict,
input_shape=(1, T, F))` works as well (it needs the input shape: its default is an image).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np

from jaxdl import models
from jaxdl.convert import Importer, from_torch, load_state_dict, register
from jaxdl.models.rnn import GATES, RecurrentNet


@register(RecurrentNet)
def convert_recurrent(importer: Importer, model: RecurrentNet) -> None:
    """Map PyTorch's recurrent names (plus `head.*`, `embed.weight`) onto `model`."""
    has_bias = importer.has("bias_ih_l0") or importer.has("bias_hh_l0")
    size = GATES[model.cell] * model.hidden_size
    suffixes = ("", "_reverse") if model.bidirectional else ("",)
    for k in range(model.num_layers):
        for sfx in suffixes:
            path = f"params/layer_{k}{sfx}"
            for torch_name, flax_name in (("ih", "input"), ("hh", "recurrent")):
                key = f"weight_{torch_name}_l{k}{sfx}"
                weight = importer.tensor(key)
                importer.set(f"{path}/{flax_name}_kernel", None if weight is None else weight.T, key)
                key = f"bias_{torch_name}_l{k}{sfx}"
                bias = importer.tensor(key) if has_bias else np.zeros((size,), np.float32)
                importer.set(f"{path}/{flax_name}_bias", bias, key)
    if model.vocab_size > 0:
        importer.set("params/embed/embedding", importer.tensor("embed.weight"), "embed.weight")
    if model.num_outputs > 0:
        importer.dense("params/head", "head", bias=True)


def _tensors(source: Any) -> dict[str, np.ndarray]:
    """A flat state dict from a torch module (anything with `state_dict()`), a mapping or a path."""
    if hasattr(source, "state_dict"):
        source = source.state_dict()
    return load_state_dict(source)


def from_torch_rnn(
    model: nn.Module | str,
    state_dict: str | Path | Mapping[str, Any] | Any,
    head: Mapping[str, Any] | Any | None = None,
    embedding: Mapping[str, Any] | Any | None = None,
    prefix: str = "",
    **model_kwargs: Any,
) -> dict:
    """`RecurrentNet` variables from a PyTorch recurrent module's weights (see the module docstring).

    Args:
      model: a `RecurrentNet`, or a registered name ('rnn', 'lstm', 'gru') built with `model_kwargs`.
      state_dict: the torch module's state dict (mapping, a path load_state_dict reads, or the module itself).
      head: the torch `nn.Linear` head (or its state dict with `weight`, `bias`), for `num_outputs > 0`.
      embedding: the torch `nn.Embedding` (or its state dict with `weight`), for `vocab_size > 0`.
      prefix: stripped from the state dict's names, e.g. 'rnn.' for a module stored as an attribute.
    """
    if isinstance(model, str):
        model = models.create_model(model, **model_kwargs)
    tensors = {k.removeprefix(prefix): v for k, v in _tensors(state_dict).items()}
    if head is not None:
        tensors.update({f"head.{k}": v for k, v in _tensors(head).items()})
    if embedding is not None:
        tensors["embed.weight"] = _tensors(embedding)["weight"]
    if getattr(model, "vocab_size", 0) > 0:
        input_shape: tuple[int, ...] = (1, 2)
    elif "weight_ih_l0" in tensors:
        input_shape = (1, 2, tensors["weight_ih_l0"].shape[1])
    else:
        raise ValueError("the state dict has no 'weight_ih_l0' to read the input size from")
    return from_torch(model, tensors, input_shape=input_shape)
