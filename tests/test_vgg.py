"""VGG family: published parameter counts, torch's adaptive pooling, torchvision equivalence, bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.vgg import VGG as TorchVGG
from torchvision.models.vgg import make_layers

from jaxdl import convert, models
from jaxdl.models.vgg import VGG, adaptive_avg_pool
from tests import helpers
from tests.torch_reference import compare_with_torch

# The "rbg" generator compiles much faster on CPU than the default threefry, keeping init cheap.
INIT_KEY = jax.random.key(0, impl="rbg")

PUBLISHED = {
    "vgg11": torchvision.models.VGG11_Weights,
    "vgg11_bn": torchvision.models.VGG11_BN_Weights,
    "vgg13": torchvision.models.VGG13_Weights,
    "vgg13_bn": torchvision.models.VGG13_BN_Weights,
    "vgg16": torchvision.models.VGG16_Weights,
    "vgg16_bn": torchvision.models.VGG16_BN_Weights,
    "vgg19": torchvision.models.VGG19_Weights,
    "vgg19_bn": torchvision.models.VGG19_BN_Weights,
}

# A small feature extractor ending in 512 channels, as torchvision's classifier input expects.
SMALL_CFG = [8, "M", 16, "M", 512, "M"]
HIDDEN = 32


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_param_counts(name: str) -> None:
    """Each VGG has torchvision's published number of parameters at 1000 classes."""
    assert helpers.param_count(name, num_outputs=1000) == PUBLISHED[name].IMAGENET1K_V1.meta["num_params"]


def test_vgg16_count_is_the_published_one() -> None:
    """The issue's headline number, checked against torchvision's weights enum."""
    published = torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["num_params"]
    assert published == 138_357_544
    assert helpers.param_count("vgg16", num_outputs=1000) == published


@pytest.mark.parametrize(("height", "width"), [(1, 1), (2, 3), (4, 4), (5, 9), (7, 7), (10, 13), (14, 14), (17, 6)])
def test_adaptive_avg_pool_matches_torch(height: int, width: int) -> None:
    """Overlapping, repeated and uneven bins all average exactly like torch's AdaptiveAvgPool2d((7, 7))."""
    x = np.random.default_rng(height * 31 + width).standard_normal((2, 3, height, width)).astype(np.float32)
    expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (7, 7)).numpy()
    ours = np.asarray(adaptive_avg_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), 7)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


def small_torch_vgg(batch_norm: bool, num_classes: int = 10) -> torch.nn.Module:
    """torchvision's VGG on SMALL_CFG, its classifier rebuilt with the same layout at HIDDEN width."""
    torch.manual_seed(0)
    model = TorchVGG(make_layers(SMALL_CFG, batch_norm=batch_norm), num_classes=num_classes)
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(512 * 7 * 7, HIDDEN),
        torch.nn.ReLU(True),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(True),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(HIDDEN, num_classes),
    )
    return model


@pytest.mark.parametrize(("batch_norm", "image_size"), [(False, 40), (True, 80)])
def test_matches_torchvision(batch_norm: bool, image_size: int) -> None:
    """VGG with and without BatchNorm matches torchvision, on 5x5 and 10x10 maps pooled to 7x7 and flattened CHW."""
    reference = small_torch_vgg(batch_norm)
    error = compare_with_torch(
        reference,
        "vgg_tiny",
        image_size,
        num_outputs=10,
        config=tuple(SMALL_CFG),
        batch_norm=batch_norm,
        classifier_width=HIDDEN,
    )
    assert error <= 1e-4


def test_cifar_stem_matches_global_pool_classifier() -> None:
    """cifar_stem is torchvision's VGG with a global average pool and a classifier on C inputs."""
    torch.manual_seed(0)
    cfg = [8, "M", 16, "M", 24, "M"]
    reference = TorchVGG(make_layers(cfg, batch_norm=True), num_classes=10)
    reference.avgpool = torch.nn.AdaptiveAvgPool2d(1)
    reference.classifier = torch.nn.Sequential(
        torch.nn.Linear(24, HIDDEN),
        torch.nn.ReLU(True),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(True),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(HIDDEN, 10),
    )
    error = compare_with_torch(
        reference,
        "vgg_tiny",
        16,
        num_outputs=10,
        config=tuple(cfg),
        batch_norm=True,
        classifier_width=HIDDEN,
        cifar_stem=True,
    )
    assert error <= 1e-4


def test_classifier_widths() -> None:
    """Hidden width: 4096 like torchvision, 512 with cifar_stem (on C inputs), or as given."""
    shapes = models.abstract_variables(models.create_model("vgg16", num_outputs=10), (1, 32, 32, 3))["params"]
    assert shapes["classifier_0"]["kernel"].shape == (512 * 7 * 7, 4096)
    model = models.create_model("vgg16", num_outputs=10, cifar_stem=True, image_size=32)
    shapes = models.abstract_variables(model, (1, 32, 32, 3))["params"]
    assert shapes["classifier_0"]["kernel"].shape == (512, 512)
    assert shapes["head"]["kernel"].shape == (512, 10)
    model = models.create_model("vgg16_bn", num_outputs=10, classifier_width=100)
    assert models.abstract_variables(model, (1, 64, 64, 3))["params"]["classifier_3"]["kernel"].shape == (100, 100)


def test_state_dict_names_follow_torch_indices() -> None:
    """The BN converter reads features.N for conv and features.N+1 for BatchNorm; a missing key is named."""
    reference = small_torch_vgg(batch_norm=True)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    model = models.create_model(
        "vgg_tiny", num_outputs=10, config=tuple(SMALL_CFG), batch_norm=True, classifier_width=HIDDEN
    )
    variables = convert.from_torch(model, state, input_shape=(1, 32, 32, 3))
    np.testing.assert_array_equal(
        variables["params"]["features_4"]["kernel"], state["features.4.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(variables["batch_stats"]["features_5"]["var"], state["features.5.running_var"])
    np.testing.assert_array_equal(variables["params"]["head"]["kernel"], state["classifier.6.weight"].T)
    del state["features.8.bias"]
    with pytest.raises(convert.StateDictError, match=r"missing tensor 'features\.8\.bias'"):
        convert.from_torch(model, state, input_shape=(1, 32, 32, 3))


def test_bfloat16_and_dropout() -> None:
    """bfloat16 compute keeps float32 params; train-mode dropout is deterministic per key."""
    model = models.create_model("vgg_tiny", num_outputs=4, dtype=jnp.bfloat16)
    assert isinstance(model, VGG)
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    variables = jax.jit(model.init)(INIT_KEY, x[:1])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))

    @jax.jit
    def step(key):
        return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])

    (out_a, _), (out_b, _), (out_c, _) = step(jax.random.key(3)), step(jax.random.key(3)), step(jax.random.key(4))
    assert out_a.dtype == jnp.bfloat16 and out_a.shape == (2, 4)
    np.testing.assert_array_equal(np.asarray(out_a, np.float32), np.asarray(out_b, np.float32))
    assert not np.array_equal(np.asarray(out_a, np.float32), np.asarray(out_c, np.float32))
    assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).dtype == jnp.bfloat16


def test_bad_config_is_rejected() -> None:
    """An unknown letter or a malformed layer list fails at construction."""
    with pytest.raises(ValueError, match="^config='C' is not valid; choose one of: A, B, D, E"):
        VGG(num_outputs=2, config="C")
    with pytest.raises(ValueError, match=r"^config=\(8, 'P'\) is not valid; every width must be > 0"):
        VGG(num_outputs=2, config=(8, "P"))
