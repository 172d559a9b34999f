"""Compare a jaxdl model with its PyTorch reference after importing the reference's weights."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch

from jaxdl import convert, models


def randomize_norm_stats(module: torch.nn.Module, seed: int = 0) -> None:
    """Gives every BatchNorm random running statistics and affine terms, so the import of each is tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                n = layer.num_features
                layer.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                layer.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                layer.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                layer.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| / max |reference|."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(ours - reference)) / max(np.max(np.abs(reference)), 1e-12))


def compare_with_torch(
    torch_model: torch.nn.Module,
    name: str,
    image_size: int,
    batch: int = 2,
    seed: int = 0,
    **model_kwargs,
) -> float:
    """Relative error between torch_model(x) and jaxdl model `name` with the imported weights (eval mode)."""
    torch.manual_seed(seed)
    torch_model.eval()
    randomize_norm_stats(torch_model, seed)
    x = np.random.default_rng(seed).standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    model = models.create_model(name, **model_kwargs)
    shape = (1, image_size, image_size, 3)
    variables = convert.from_torch(model, torch_model.state_dict(), input_shape=shape)
    ours = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    return relative_error(ours, expected)
