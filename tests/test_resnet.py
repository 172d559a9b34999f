"""ResNet family: published parameter counts, torchvision equivalence, plain nets, import errors, bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

from jaxdl import convert, models
from jaxdl.models.resnet import ResNet
from tests import helpers
from tests.torch_reference import compare_with_torch

# The "rbg" generator compiles much faster on CPU than the default threefry, keeping init cheap.
INIT_KEY = jax.random.key(0, impl="rbg")

PUBLISHED = {
    "resnet18": torchvision.models.ResNet18_Weights,
    "resnet34": torchvision.models.ResNet34_Weights,
    "resnet50": torchvision.models.ResNet50_Weights,
    "resnet101": torchvision.models.ResNet101_Weights,
    "resnet152": torchvision.models.ResNet152_Weights,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_param_counts(name: str) -> None:
    """Each ResNet has torchvision's published number of parameters at 1000 classes."""
    assert helpers.param_count(name, num_outputs=1000) == PUBLISHED[name].IMAGENET1K_V1.meta["num_params"]


def test_resnet50_count_is_the_published_one() -> None:
    """The issue's headline number, checked against torchvision's weights enum."""
    published = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["num_params"]
    assert published == 25_557_032
    assert helpers.param_count("resnet50", num_outputs=1000) == published


@pytest.mark.parametrize(("plain", "residual"), [("plain18", "resnet18"), ("plain34", "resnet34")])
def test_plain_nets_have_no_shortcut(plain: str, residual: str) -> None:
    """A plain net is its ResNet minus exactly the projection shortcuts (torchvision's `downsample` modules)."""
    torch_model = getattr(torchvision.models, residual)(weights=None)
    shortcut = sum(p.numel() for n, p in torch_model.named_parameters() if ".downsample." in n)
    total = sum(p.numel() for p in torch_model.parameters())
    assert shortcut > 0
    assert helpers.param_count(plain, num_outputs=1000) == total - shortcut
    assert helpers.param_count(residual, num_outputs=1000) == total
    model = models.create_model(plain, num_outputs=1000)
    params = models.abstract_variables(model, (1, 224, 224, 3))["params"]
    paths = ["/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert not [p for p in paths if "downsample" in p]


def test_plain_block_has_no_identity_add() -> None:
    """With every block's last BatchNorm zeroed, a plain net outputs a constant; a residual net still sees its input."""
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    outputs = {}
    for residual in (True, False):
        model = models.create_model("resnet_tiny", num_outputs=5, residual=residual, zero_init_residual=True)
        variables = jax.jit(model.init)(INIT_KEY, x[:1])
        zero_scales = [
            leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
            if "/".join(str(k.key) for k in path).endswith("bn2/scale")
        ]
        assert len(zero_scales) == 4 and all(not np.any(s) for s in zero_scales)
        outputs[residual] = np.asarray(jax.jit(model.apply)(variables, x))
    np.testing.assert_array_equal(outputs[False][0], outputs[False][1])
    assert np.max(np.abs(outputs[True][0] - outputs[True][1])) > 1e-4


def test_basic_block_matches_torchvision() -> None:
    """torchvision ResNet(BasicBlock, [1, 1, 1, 1]) and jaxdl's equivalent give the same logits."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    error = compare_with_torch(reference, "resnet_tiny", 32, num_outputs=10, width=64)
    assert error <= 1e-4


def test_bottleneck_matches_torchvision() -> None:
    """Bottleneck blocks (stride on the 3x3 conv, v1.5) match torchvision, projections included."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet.ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)
    error = compare_with_torch(reference, "resnet50", 32, num_outputs=10, stage_sizes=(1, 1, 1, 1))
    assert error <= 1e-4


def test_cifar_stem_matches_torchvision_with_3x3_stem() -> None:
    """cifar_stem equals torchvision's ResNet with conv1 replaced by a 3x3 stride-1 conv and no max-pool."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    reference.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    reference.maxpool = torch.nn.Identity()
    error = compare_with_torch(reference, "resnet_tiny", 16, num_outputs=10, width=64, cifar_stem=True)
    assert error <= 1e-4


def test_state_dict_errors_name_each_problem() -> None:
    """A missing, an extra and a mis-shaped tensor are each named by the StateDictError."""
    state = {k: v.numpy() for k, v in torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1]).state_dict().items()}
    model = models.create_model("resnet_tiny", num_outputs=1000, width=64)
    variables = convert.from_torch(model, state)
    assert variables["params"]["layer2_0"]["downsample_0"]["kernel"].shape == (1, 1, 64, 128)

    broken = dict(state)
    del broken["layer2.0.downsample.1.running_var"]
    broken["layer5.0.conv1.weight"] = np.zeros((64, 64, 3, 3), np.float32)
    broken["layer1.0.conv2.weight"] = broken["layer1.0.conv2.weight"].reshape(64, 64, 9, 1)
    with pytest.raises(convert.StateDictError) as info:
        convert.from_torch(model, broken)
    message = str(info.value)
    assert "missing tensor 'layer2.0.downsample.1.running_var'" in message
    assert "unexpected tensor 'layer5.0.conv1.weight'" in message
    assert "tensor 'layer1.0.conv2.weight' has shape (9, 1, 64, 64); the model expects (3, 3, 64, 64)" in message


def test_bfloat16_and_train_mode() -> None:
    """bfloat16 compute keeps float32 params; train mode updates batch stats deterministically.

    Also: like torchvision, the last BatchNorm of each block starts at scale one unless
    `zero_init_residual` is set.
    """
    model = models.create_model("resnet_tiny", num_outputs=4, dtype=jnp.bfloat16)
    assert isinstance(model, ResNet) and model.zero_init_residual is False
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    variables = jax.jit(model.init)(INIT_KEY, x[:1])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    for stage, width in enumerate((8, 16, 32, 64), start=1):
        np.testing.assert_array_equal(variables["params"][f"layer{stage}_0"]["bn2"]["scale"], np.ones(width))

    @jax.jit
    def step(key):
        return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])

    (out_a, stats_a), (out_b, stats_b) = step(jax.random.key(3)), step(jax.random.key(3))
    assert out_a.dtype == jnp.bfloat16 and out_a.shape == (2, 4)
    np.testing.assert_array_equal(np.asarray(out_a, np.float32), np.asarray(out_b, np.float32))
    jax.tree.map(np.testing.assert_array_equal, stats_a, stats_b)
    mean_before = variables["batch_stats"]["bn1"]["mean"]
    assert np.max(np.abs(np.asarray(stats_a["batch_stats"]["bn1"]["mean"]) - np.asarray(mean_before))) > 0
    assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).dtype == jnp.bfloat16


def test_unknown_block_is_rejected() -> None:
    """A misspelt block type fails at construction."""
    with pytest.raises(ValueError, match="unknown ResNet block"):
        ResNet(num_outputs=2, block="bottle")
