"""Backbones with feature maps (`features_only=True`): strides, shapes, no head, and weight import without it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import convert, models

# Each vision family's tiny variant: {stride: (height, width, channels)} for one image at its image_size.
EXPECTED = {
    "resnet_tiny": {2: (16, 16, 8), 4: (8, 8, 8), 8: (4, 4, 16), 16: (2, 2, 32), 32: (1, 1, 64)},
    "vgg_tiny": {1: (32, 32, 8), 2: (16, 16, 16), 4: (8, 8, 32), 8: (4, 4, 32)},
    "densenet_tiny": {2: (16, 16, 16), 4: (8, 8, 32), 8: (4, 4, 32), 16: (2, 2, 32), 32: (1, 1, 32)},
    "googlenet_tiny": {2: (16, 16, 8), 4: (8, 8, 24), 8: (4, 4, 60), 16: (2, 2, 104), 32: (1, 1, 128)},
    "efficientnet_tiny": {2: (16, 16, 8), 4: (8, 8, 8), 8: (4, 4, 16), 16: (2, 2, 32), 32: (1, 1, 80)},
    "vit_mini": {8: (4, 4, 32)},
    "convnext_mini": {4: (8, 8, 8), 8: (4, 4, 16), 16: (2, 2, 32), 32: (1, 1, 64)},
}

# What the classifier has and a features_only model does not build.
HEAD_ONLY = {
    "resnet_tiny": {"head"},
    "vgg_tiny": {"classifier_0", "classifier_3", "head"},
    "densenet_tiny": {"head"},
    "googlenet_tiny": {"aux1", "aux2", "head"},
    "efficientnet_tiny": {"head_conv", "head_bn", "head"},
    "vit_mini": {"head"},
    "convnext_mini": {"head_norm", "head"},
    "cnn": {"dense", "head"},
}


def _shapes(maps: dict) -> dict:
    return {stride: tuple(shape.shape[1:]) for stride, shape in maps.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tiny_variants_return_maps_at_their_strides(name: str) -> None:
    """The dict's strides and shapes, by tracing only."""
    maps = models.feature_shapes(name, (2, 32, 32, 3))
    assert list(maps) == sorted(maps)
    assert _shapes(maps) == EXPECTED[name]
    assert all(shape.shape[0] == 2 and shape.dtype == jnp.float32 for shape in maps.values())
    assert models.feature_channels(name) == {s: c for s, (_, _, c) in EXPECTED[name].items()}
    assert models.feature_strides(name) == tuple(EXPECTED[name])


def test_published_backbones_match_smp_and_timm_strides() -> None:
    """resnet18 gives smp's ResNet encoder maps (stem before the max-pool, then layer1-4)."""
    assert _shapes(models.feature_shapes("resnet18")) == {
        2: (112, 112, 64),
        4: (56, 56, 64),
        8: (28, 28, 128),
        16: (14, 14, 256),
        32: (7, 7, 512),
    }
    assert models.feature_channels("resnet50") == {2: 64, 4: 256, 8: 512, 16: 1024, 32: 2048}
    assert models.feature_channels("efficientnet_b0") == {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}
    assert models.feature_channels("convnext_tiny") == {4: 96, 8: 192, 16: 384, 32: 768}
    assert models.feature_channels("vit_b_16") == {16: 768}
    assert models.feature_channels("cnn", (1, 28, 28, 1)) == {2: 32, 4: 64}


def test_cifar_stems_keep_the_last_map_at_each_stride() -> None:
    """A stem at stride 1 is replaced by the first stage at the same stride."""
    assert models.feature_strides("resnet_tiny", cifar_stem=True) == (1, 2, 4, 8)
    assert models.feature_strides("googlenet_tiny", cifar_stem=True) == (1, 2, 4)
    assert models.feature_strides("convnext_mini", cifar_stem=True) == (2, 4, 8, 16)


@pytest.mark.parametrize("name", sorted(HEAD_ONLY))
def test_features_only_builds_the_trunk_without_head(name: str) -> None:
    """Same parameter names and shapes as the classifier, less its head(s)."""
    shape = (1, 8, 8, 1) if name == "cnn" else (1, 32, 32, 3)
    classifier = models.abstract_variables(models.create_model(name, num_outputs=10), shape)
    trunk = models.abstract_variables(models.create_backbone(name), shape)
    assert set(trunk["params"]) == set(classifier["params"]) - HEAD_ONLY[name]
    for key, value in trunk["params"].items():
        assert jax.tree.map(lambda a: a.shape, value) == jax.tree.map(lambda a: a.shape, classifier["params"][key])


def test_features_only_is_a_flag_and_num_outputs_is_optional() -> None:
    model = models.create_model("resnet_tiny", num_outputs=7, features_only=True)
    assert model.features_only and model.num_outputs == 7  # Ignored.
    assert models.create_backbone("resnet_tiny").features_only
    with pytest.raises(ValueError, match="was not built with features_only=True"):
        models.feature_shapes(models.create_model("resnet_tiny", num_outputs=2))


@pytest.mark.parametrize("name", ["mlp", "rnn", "lstm", "gru", "ar", "logistic_regression"])
def test_models_without_feature_maps_say_so(name: str) -> None:
    message = f"^model '{name}' has no feature maps \\(features_only\\); choose a vision backbone: cnn, convnext_"
    with pytest.raises(ValueError, match=message):
        models.create_model(name, num_outputs=2, features_only=True)
    with pytest.raises(ValueError, match=message):
        models.create_backbone(name)
    assert name not in models.list_backbones()
    assert {"resnet18", "vit_b_16", "convnext_tiny", "vgg16_bn", "googlenet"} <= set(models.list_backbones())
    assert not any(n.startswith("unet") for n in models.list_backbones())


@pytest.mark.slow
def test_resnet18_stride_32_map_is_what_the_classifier_pools() -> None:
    """logits = mean(features[32]) @ head + bias, with the classifier's own (real) init."""
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    classifier = models.create_model("resnet18", num_outputs=5)
    # Jitted and with the "rbg" PRNG: XLA on CPU compiles threefry's normals slowly, op by op even more so.
    variables = jax.jit(lambda x: classifier.init(jax.random.key(0, impl="rbg"), x, train=False))(x)
    logits = jax.jit(lambda v, x: classifier.apply(v, x, train=False))(variables, x)
    trunk = {
        "params": {k: v for k, v in variables["params"].items() if k != "head"},
        "batch_stats": variables["batch_stats"],
    }
    backbone = models.create_backbone("resnet18")
    maps = jax.jit(lambda v, x: backbone.apply(v, x, train=False))(trunk, x)
    assert maps[32].shape == (2, 2, 2, 512)
    head = variables["params"]["head"]
    pooled = jnp.mean(maps[32], axis=(1, 2)) @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(pooled, logits, rtol=1e-5, atol=1e-5)


def test_torchvision_weights_load_into_a_backbone_with_or_without_fc() -> None:
    """A features_only ResNet takes torchvision's state dict (fc ignored) or the one smp's encoder has (no fc)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from tests.torch_reference import randomize_norm_stats, relative_error

    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    randomize_norm_stats(reference)
    state = reference.state_dict()
    backbone = models.create_backbone("resnet18")
    shape = (1, 64, 64, 3)
    variables = convert.from_torch(backbone, state, input_shape=shape)
    without_fc = convert.from_torch(backbone, {k: v for k, v in state.items() if not k.startswith("fc.")})
    jax.tree.map(np.testing.assert_array_equal, variables, without_fc)
    assert "head" not in variables["params"]

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        t = torch.from_numpy(x)
        stem = reference.relu(reference.bn1(reference.conv1(t)))
        layer4 = reference.layer4(reference.layer3(reference.layer2(reference.layer1(reference.maxpool(stem)))))
    maps = jax.jit(lambda v, x: backbone.apply(v, x, train=False))(variables, x.transpose(0, 2, 3, 1))
    assert relative_error(maps[2], stem.numpy().transpose(0, 2, 3, 1)) < 1e-4
    assert relative_error(maps[32], layer4.numpy().transpose(0, 2, 3, 1)) < 1e-4


def test_efficientnet_backbone_imports_its_trunk_and_skips_the_head() -> None:
    """EfficientNet's last 1x1 conv (`features.8`) and classifier are neither needed nor in the way."""
    torchvision = pytest.importorskip("torchvision")
    state = torchvision.models.efficientnet_b0().state_dict()
    backbone = models.create_backbone("efficientnet_b0")
    variables = convert.from_torch(backbone, state, input_shape=(1, 64, 64, 3))
    assert "head_conv" not in variables["params"] and "stage7_0" in variables["params"]
    trunk_only = {k: v for k, v in state.items() if not k.startswith(("classifier.", "features.8."))}
    convert.from_torch(backbone, trunk_only, input_shape=(1, 64, 64, 3))
