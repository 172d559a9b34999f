"""ConvNeXt: torchvision parameter counts, logits against torchvision, bfloat16 and training mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.convnext import ConvNeXt as TorchConvNeXt

from jaxdl import convert, models
from jaxdl.models.convnext import block_stochastic_depth_rates
from tests import helpers
from tests.torch_reference import compare_with_torch

PUBLISHED = ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"]


def _randomize(module: torch.nn.Module, seed: int = 1) -> None:
    """Random biases, LayerNorm affine terms and layer scales (torchvision inits them to 0, 1 and 1e-6)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            elif name.endswith("layer_scale") or param.ndim == 1:
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)


def _torchvision_convnext() -> torch.nn.Module:
    """Three stages, two blocks in the first and last: every block/downsample index pattern."""
    setting = [CNBlockConfig(16, 32, 2), CNBlockConfig(32, 48, 1), CNBlockConfig(48, None, 2)]
    torch.manual_seed(0)
    model = TorchConvNeXt(setting, stochastic_depth_prob=0.3, layer_scale=1e-6, num_classes=10)
    _randomize(model)
    return model


@pytest.mark.parametrize("name", PUBLISHED)
def test_param_count_matches_torchvision(name: str) -> None:
    """Each published variant has exactly torchvision's parameter count at 1000 classes."""
    size = name.split("_")[1].capitalize()
    weights = getattr(torchvision.models, f"ConvNeXt_{size}_Weights").IMAGENET1K_V1
    assert helpers.param_count(name) == weights.meta["num_params"]


def test_registered_stochastic_depth() -> None:
    """torchvision's stochastic-depth rates, spread linearly from 0 to the rate at the last block."""
    rates = [models.create_model(name, num_outputs=10).stochastic_depth_rate for name in PUBLISHED]
    assert rates == [0.1, 0.4, 0.5, 0.5]
    assert block_stochastic_depth_rates((1, 2), 0.5) == pytest.approx([0.0, 0.25, 0.5])
    assert block_stochastic_depth_rates((1,), 0.5) == [0.0]


def test_matches_torchvision_logits() -> None:
    """A small torchvision ConvNeXt with random layer scales and norms gives our logits in eval mode."""
    error = compare_with_torch(
        _torchvision_convnext(),
        "convnext_tiny",
        32,
        num_outputs=10,
        depths=(2, 1, 2),
        widths=(16, 32, 48),
        stochastic_depth_rate=0.3,
    )
    assert error <= 1e-4


def test_wrong_state_dict_is_reported() -> None:
    """A layer scale of the wrong shape and a missing tensor are named in the error."""
    state = _torchvision_convnext().state_dict()
    state["features.5.1.layer_scale"] = torch.ones(47, 1, 1)
    del state["features.2.1.bias"]
    with pytest.raises(convert.StateDictError, match=r"features\.2\.1\.bias.*features\.5\.1\.layer_scale"):
        convert.from_torch("convnext_tiny", state, num_outputs=10, depths=(2, 1, 2), widths=(16, 32, 48))


def test_cifar_stem_patch_size() -> None:
    """The CIFAR stem patchifies 2x2: a 32x32 image enters the first stage at 16x16 (8x8 otherwise)."""
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    for cifar, side, kernel in ((False, 8, (4, 4, 3, 8)), (True, 16, (2, 2, 3, 8))):
        model = models.create_model("convnext_mini", num_outputs=10, cifar_stem=cifar)

        def run(x, model=model):
            variables = model.init(jax.random.key(0), x)
            out, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
            return variables["params"], out, state["intermediates"]["stem_conv"]["__call__"][0]

        params, out, stem = jax.eval_shape(run, x)
        assert out.shape == (2, 10)
        assert stem.shape == (2, side, side, 8)
        assert params["stem_conv"]["kernel"].shape == kernel


def test_bfloat16_and_training_mode() -> None:
    """bfloat16 compute keeps float32 params; stochastic depth is deterministic per key and off in eval."""
    model = models.create_model("convnext_mini", num_outputs=10, dtype=jnp.bfloat16, stochastic_depth_rate=0.9)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    abstract = models.abstract_variables(model, x.shape)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))
    rng = np.random.default_rng(0)
    # Random values instead of a compiled init; unit layer scales so every block matters.
    params = jax.tree.map(lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape) * 0.3, leaf.dtype), abstract)
    params = jax.tree.map(lambda leaf: leaf + 1.0 if leaf.ndim == 1 else leaf, params)["params"]

    @jax.jit
    def forward(params, key):
        train = model.apply({"params": params}, x, train=True, rngs={"dropout": key})
        return train, model.apply({"params": params}, x, train=False)

    out, evaluated = forward(params, jax.random.key(5))
    again, evaluated_again = forward(params, jax.random.key(5))
    other, _ = forward(params, jax.random.key(6))
    assert out.dtype == jnp.bfloat16 and evaluated.dtype == jnp.bfloat16 and out.shape == (4, 10)
    as_float = [np.asarray(a, np.float32) for a in (out, again, other, evaluated, evaluated_again)]
    assert all(np.all(np.isfinite(a)) for a in as_float)
    assert np.array_equal(as_float[0], as_float[1])
    assert not np.array_equal(as_float[0], as_float[2])
    assert not np.array_equal(as_float[0], as_float[3])
    assert np.array_equal(as_float[3], as_float[4])
