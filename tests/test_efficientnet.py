"""EfficientNet: torchvision parameter counts, logits against torchvision, bfloat16 and training mode."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models import efficientnet as tv_efficientnet
from torchvision.models._utils import _make_divisible

from jaxdl import convert, models
from jaxdl.models.efficientnet import EfficientNet, make_divisible, mbconv_specs
from jaxdl.models.layers import StochasticDepth
from tests import helpers
from tests.torch_reference import compare_with_torch

PUBLISHED = [f"efficientnet_b{i}" for i in range(8)]


def _randomize_biases(module: torch.nn.Module, seed: int = 1) -> None:
    """torchvision zeroes every bias at init; random ones make the bias import observable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _torchvision_efficientnet(width: float, depth: float, **kwargs) -> torch.nn.Module:
    setting, last_channel = tv_efficientnet._efficientnet_conf("efficientnet_b0", width_mult=width, depth_mult=depth)
    torch.manual_seed(0)
    model = tv_efficientnet.EfficientNet(setting, dropout=0.2, last_channel=last_channel, num_classes=10, **kwargs)
    _randomize_biases(model)
    return model


@pytest.mark.parametrize("name", PUBLISHED)
def test_param_count_matches_torchvision(name: str) -> None:
    """Each published variant has exactly torchvision's parameter count at 1000 classes."""
    weights = getattr(torchvision.models, f"EfficientNet_B{name[-1]}_Weights").IMAGENET1K_V1
    assert helpers.param_count(name) == weights.meta["num_params"]


def test_registered_resolutions_and_dropout() -> None:
    """Each variant carries its published input size, dropout and BatchNorm settings."""
    sizes = [224, 240, 260, 300, 380, 456, 528, 600]
    dropouts = [0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5]
    for i, name in enumerate(PUBLISHED):
        model = models.create_model(name, num_outputs=1000)
        assert (model.image_size, model.dropout_rate, model.stochastic_depth_rate) == (sizes[i], dropouts[i], 0.2)
        assert (model.bn_epsilon, model.bn_momentum) == ((1e-3, 0.01) if i >= 5 else (1e-5, 0.1))


def test_scaling_matches_torchvision_configuration() -> None:
    """Width rounding, depth rounding and block strides agree with torchvision's configs for B0-B7."""
    multipliers = [(1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8), (1.6, 2.2), (1.8, 2.6), (2.0, 3.1)]
    for width, depth in multipliers:
        setting, _ = tv_efficientnet._efficientnet_conf("efficientnet_b0", width_mult=width, depth_mult=depth)
        expected = []
        for stage in setting:
            for i in range(stage.num_layers):
                in_ch = stage.input_channels if i == 0 else stage.out_channels
                expected.append((stage.kernel, stage.stride if i == 0 else 1, in_ch, stage.out_channels))
        specs = EfficientNet(num_outputs=10, width_mult=width, depth_mult=depth).block_specs()
        assert [(s.kernel, s.stride, s.in_channels, s.out_channels) for s in specs] == expected
    values = [4.0, 10.0, 11.9, 35.2, 36.0, 67.2, 1.4 * 1152, 2.6 * 40]
    assert [make_divisible(v) for v in values] == [_make_divisible(v, 8) for v in values]


def test_stochastic_depth_rates_rise_linearly() -> None:
    """Block i of n drops with rate 0.2 * i / n, as torchvision's MBConv stages."""
    specs = mbconv_specs(((1, 3, 1, 32, 16, 2), (6, 3, 2, 16, 24, 2)), 1.0, 1.0, 0.2)
    assert [s.stochastic_depth_rate for s in specs] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    assert [s.residual for s in specs] == [False, True, False, True]


@pytest.mark.slow
def test_matches_torchvision_logits() -> None:
    """Scaled-down torchvision EfficientNet (width 0.25, depth 0.5: expansion, SE, residual blocks) gives our logits."""
    torch_model = _torchvision_efficientnet(0.25, 0.5)
    error = compare_with_torch(torch_model, "efficientnet_b0", 32, num_outputs=10, width_mult=0.25, depth_mult=0.5)
    assert error <= 1e-4


def test_matches_torchvision_logits_large_variant_batch_norm() -> None:
    """B5-B7's BatchNorm (eps 1e-3) imports and evaluates like torchvision's."""
    norm = partial(torch.nn.BatchNorm2d, eps=1e-3, momentum=0.01)
    torch_model = _torchvision_efficientnet(0.25, 0.25, norm_layer=norm)
    error = compare_with_torch(torch_model, "efficientnet_b5", 32, num_outputs=10, width_mult=0.25, depth_mult=0.25)
    assert error <= 1e-4


def test_wrong_state_dict_is_reported() -> None:
    """A missing or extra tensor is named in the error."""
    state = _torchvision_efficientnet(0.25, 0.25).state_dict()
    del state["features.2.0.block.2.fc1.bias"]
    state["classifier.9.weight"] = torch.zeros(3)
    with pytest.raises(convert.StateDictError, match=r"features\.2\.0\.block\.2\.fc1\.bias.*classifier\.9\.weight"):
        convert.from_torch("efficientnet_tiny", state, num_outputs=10)


def test_cifar_stem_keeps_resolution() -> None:
    """The CIFAR stem is stride 1: a 32x32 image leaves the stem at 32x32 (16x16 otherwise), same parameters."""
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    shapes = {}
    for cifar in (False, True):
        model = models.create_model("efficientnet_tiny", num_outputs=10, cifar_stem=cifar)

        def run(x, model=model):
            variables = model.init(jax.random.key(0), x)
            out, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
            return variables["params"], out, state["intermediates"]["stem_conv"]["__call__"][0]

        params, out, stem = jax.eval_shape(run, x)
        assert out.shape == (2, 10)
        shapes[cifar] = (stem.shape, models.count_params(params))
    assert shapes[False][0] == (2, 16, 16, 8) and shapes[True][0] == (2, 32, 32, 8)
    assert shapes[False][1] == shapes[True][1]


def test_stochastic_depth_drops_whole_examples() -> None:
    """In training each example's branch is either zeroed or scaled by 1 / (1 - rate); eval is the identity."""
    layer = StochasticDepth(0.25)
    x = jnp.ones((512, 2, 2, 3))
    out = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(3)})
    per_example = np.asarray(out).reshape(512, -1)
    assert np.all(per_example == per_example[:, :1])
    assert set(np.unique(per_example)) <= {0.0, np.float32(1 / 0.75)}
    assert 0.15 < np.mean(per_example[:, 0] == 0) < 0.35
    assert np.array_equal(layer.apply({}, x, train=False), x)


def random_variables(model, shape: tuple[int, ...], seed: int = 0) -> tuple[dict, dict]:
    """The model's abstract variables and random float32 values for them, without compiling an init."""
    abstract = models.abstract_variables(model, shape)
    rng = np.random.default_rng(seed)

    params = jax.tree.map(
        lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape) * 0.3, leaf.dtype), abstract["params"]
    )
    # Running variances must stay positive: unit statistics.
    stats = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, leaf.dtype), abstract["batch_stats"])
    return abstract, {"params": params, "batch_stats": stats}


def test_bfloat16_and_training_mode() -> None:
    """bfloat16 compute keeps float32 params; training is deterministic per key and updates BatchNorm stats."""
    model = models.create_model("efficientnet_tiny", num_outputs=10, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    abstract, variables = random_variables(model, x.shape)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract["params"]))

    @jax.jit
    def train_step(variables, key):
        return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])

    out, state = train_step(variables, jax.random.key(5))
    again, _ = train_step(variables, jax.random.key(5))
    other, _ = train_step(variables, jax.random.key(6))
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 10)
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    assert np.array_equal(np.asarray(out, np.float32), np.asarray(again, np.float32))
    assert not np.array_equal(np.asarray(out, np.float32), np.asarray(other, np.float32))
    before = variables["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(state["batch_stats"]["stem_bn"]["mean"], before)
