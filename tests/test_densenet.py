"""DenseNet: parameter counts, torchvision weight import and logits, the CIFAR stem, bfloat16 and dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxdl import convert, models
from jaxdl.models.densenet import DenseNet
from tests.torch_reference import compare_with_torch

# The small torchvision DenseNet of the comparisons and its jaxdl spelling.
SMALL = {"growth_rate": 8, "block_config": (2, 2), "num_init_features": 16, "bn_size": 2}
TORCH_SMALL = {"growth_rate": 8, "block_config": (2, 2), "num_init_features": 16, "bn_size": 2, "num_classes": 10}


def _small_torch_densenet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.densenet.DenseNet(**TORCH_SMALL)


@pytest.mark.parametrize(
    "name, weights",
    [
        ("densenet121", torchvision.models.DenseNet121_Weights.IMAGENET1K_V1),
        ("densenet161", torchvision.models.DenseNet161_Weights.IMAGENET1K_V1),
        ("densenet169", torchvision.models.DenseNet169_Weights.IMAGENET1K_V1),
        ("densenet201", torchvision.models.DenseNet201_Weights.IMAGENET1K_V1),
    ],
)
def test_param_count_matches_torchvision(name, weights) -> None:
    """Each published DenseNet has exactly torchvision's parameter count (shapes only, nothing compiled)."""
    model = models.create_model(name, num_outputs=1000)
    assert isinstance(model, DenseNet)
    params = models.abstract_variables(model, (1, 224, 224, 3))["params"]
    assert models.count_params(params) == weights.meta["num_params"]


def test_published_layout() -> None:
    """densenet121's variables carry torchvision's structure: 58 dense layers, 3 transitions, 1024 final channels."""
    model = models.create_model("densenet121", num_outputs=1000)
    variables = models.abstract_variables(model, (1, 224, 224, 3))
    params = variables["params"]
    assert sum(len(params[f"denseblock{i}"]) for i in range(1, 5)) == 6 + 12 + 24 + 16
    assert sorted(k for k in params if k.startswith("transition")) == ["transition1", "transition2", "transition3"]
    assert params["conv0"]["kernel"].shape == (7, 7, 3, 64)
    assert params["denseblock1"]["denselayer1"]["conv1"]["kernel"].shape == (1, 1, 64, 128)
    assert params["denseblock4"]["denselayer16"]["conv2"]["kernel"].shape == (3, 3, 128, 32)
    assert params["transition3"]["conv"]["kernel"].shape == (1, 1, 1024, 512)
    assert params["head"]["kernel"].shape == (1024, 1000)
    assert variables["batch_stats"]["norm5"]["mean"].shape == (1024,)


def test_logits_match_torchvision() -> None:
    """A small torchvision DenseNet and jaxdl's matching config agree at an odd size (floor avg-pools)."""
    error = compare_with_torch(_small_torch_densenet(), "densenet_tiny", 35, num_outputs=10, **SMALL)
    assert error <= 1e-4


def test_cifar_stem_matches_torchvision_with_3x3_stem() -> None:
    """cifar_stem equals torchvision's DenseNet with conv0 swapped for a 3x3 stride-1 conv and pool0 removed."""
    reference = _small_torch_densenet(seed=1)
    reference.features.conv0 = torch.nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
    reference.features.pool0 = torch.nn.Identity()
    error = compare_with_torch(reference, "densenet_tiny", 16, num_outputs=10, cifar_stem=True, **SMALL)
    assert error <= 1e-4


def _legacy_name(key: str) -> str:
    """`...denselayer1.norm1.weight` -> `...denselayer1.norm.1.weight`, as in torchvision's published files."""
    if ".denselayer" not in key:
        return key
    for name in ("norm1", "norm2", "conv1", "conv2"):
        key = key.replace(f".{name}.", f".{name[:-1]}.{name[-1]}.")
    return key


def test_legacy_state_dict_names_import() -> None:
    """torchvision's published files spell dense-layer tensors `norm.1`/`conv.2`; both spellings import alike."""
    state = {k: v.numpy() for k, v in _small_torch_densenet().state_dict().items()}
    legacy = {_legacy_name(key): value for key, value in state.items()}
    assert "features.denseblock1.denselayer1.norm.1.running_var" in legacy
    model = models.create_model("densenet_tiny", num_outputs=10, **SMALL)
    current = convert.from_torch(model, state, input_shape=(1, 32, 32, 3))
    renamed = convert.from_torch(model, legacy, input_shape=(1, 32, 32, 3))
    flat_current, flat_renamed = jax.tree_util.tree_leaves_with_path(current), jax.tree.leaves(renamed)
    assert len(flat_current) == len(flat_renamed) > 0
    for (path, a), b in zip(flat_current, flat_renamed, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_mismatched_config_names_tensors() -> None:
    """A state dict from a deeper torch model names the dense layer the jaxdl model lacks."""
    state = _small_torch_densenet().state_dict()
    model = models.create_model("densenet_tiny", num_outputs=10, **{**SMALL, "block_config": (2, 1)})
    with pytest.raises(convert.StateDictError, match=r"unexpected tensor 'features\.denseblock2\.denselayer2\."):
        convert.from_torch(model, state, input_shape=(1, 32, 32, 3))


@pytest.mark.slow
def test_bfloat16_and_dropout() -> None:
    """bfloat16 compute keeps float32 params; training with dropout is deterministic per key and updates stats."""
    model = models.create_model("densenet_tiny", num_outputs=5, dtype=jnp.bfloat16, dropout_rate=0.3, cifar_stem=True)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))

    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert logits.shape == (2, 5) and logits.dtype == jnp.bfloat16

    @jax.jit
    def train_step(variables, key):
        return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])

    out_a, updates = train_step(variables, jax.random.key(2))
    out_b, _ = train_step(variables, jax.random.key(2))
    out_c, _ = train_step(variables, jax.random.key(3))
    assert out_a.shape == (2, 5) and out_a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out_a, np.float32), np.asarray(out_b, np.float32))
    assert not np.array_equal(np.asarray(out_a, np.float32), np.asarray(out_c, np.float32))
    old, new = variables["batch_stats"]["norm0"]["mean"], updates["batch_stats"]["norm0"]["mean"]
    assert new.dtype == jnp.float32 and not np.allclose(old, new)
