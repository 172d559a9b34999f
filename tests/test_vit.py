"""ViT family: parameter counts against torchvision, imported-weight parity with torch, bfloat16 and dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

from jaxdl import convert, models
from jaxdl.models.layers import StochasticDepth
from tests import helpers
from tests.torch_reference import compare_with_torch

# torchvision's published counts, read offline from the weights metadata.
PUBLISHED = {
    "vit_b_16": torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1,
    "vit_b_32": torchvision.models.ViT_B_32_Weights.IMAGENET1K_V1,
    "vit_l_16": torchvision.models.ViT_L_16_Weights.IMAGENET1K_V1,
}
# Names torchvision lacks: (patch, layers, heads, hidden, mlp) for its VisionTransformer class.
BUILT = {"vit_ti_16": (16, 12, 3, 192, 768), "vit_s_16": (16, 12, 6, 384, 1536)}
MINI = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_param_counts(name):
    assert helpers.param_count(name) == PUBLISHED[name].meta["num_params"]


def test_vit_b_16_count_is_the_expected_number():
    assert helpers.param_count("vit_b_16") == 86_567_656


@pytest.mark.parametrize("name", sorted(BUILT))
def test_param_counts_of_torchvision_built_equivalents(name):
    patch, layers, heads, hidden, mlp = BUILT[name]
    with torch.device("meta"):  # shapes only, nothing allocated
        reference = VisionTransformer(224, patch, layers, heads, hidden, mlp, num_classes=1000)
    assert helpers.param_count(name) == sum(p.numel() for p in reference.parameters())


def test_image_size_sets_the_position_embedding_length():
    model = models.create_model("vit_b_16", num_outputs=10, image_size=384)
    params = models.abstract_variables(model, (1, 384, 384, 3))["params"]
    assert params["pos_embedding"].shape == (1, (384 // 16) ** 2 + 1, 768)
    # torchvision's 384px SWAG weights differ from the 224px ones only in the position embedding and head.
    assert (
        helpers.param_count("vit_b_16", image_size=384)
        == torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1.meta["num_params"]
    )


def _torch_vit(**overrides) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(**{**MINI, **overrides})
    # torchvision zero-initialises the class token and the head; random values test their import.
    with torch.no_grad():
        model.class_token.normal_()
        model.heads.head.weight.normal_(std=0.2)
        model.heads.head.bias.normal_()
    return model


def test_matches_torchvision_vit():
    error = compare_with_torch(_torch_vit(), "vit_mini", 32, num_outputs=10)
    assert error <= 1e-4


def test_cifar_stem_matches_torchvision_with_4x4_patches():
    """The CIFAR setting: image_size=32 with 4x4 patches (64 tokens), via patch_size=4 or cifar_stem=True."""
    reference = _torch_vit(patch_size=4)
    assert compare_with_torch(reference, "vit_mini", 32, num_outputs=10, cifar_stem=True) <= 1e-4
    model = models.create_model("vit_mini", num_outputs=10, patch_size=4)
    stem = models.create_model("vit_mini", num_outputs=10, cifar_stem=True)
    shape = (1, 32, 32, 3)
    assert jax.tree.map(jnp.shape, models.abstract_variables(model, shape)) == jax.tree.map(
        jnp.shape, models.abstract_variables(stem, shape)
    )


def test_full_size_forward_shape():
    model = models.create_model("vit_b_16", num_outputs=1000)
    sample = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = models.abstract_variables(model, (1, 224, 224, 3))
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, sample)
    assert out.shape == (2, 1000)


def test_wrong_image_size_is_rejected():
    model = models.create_model("vit_mini", num_outputs=10)
    with pytest.raises(ValueError, match="32x32"):
        models.abstract_variables(model, (1, 64, 64, 3))


def test_state_dict_errors_name_the_tensor():
    state = _torch_vit().state_dict()
    del state["encoder.layers.encoder_layer_1.self_attention.in_proj_bias"]
    state["encoder.layers.encoder_layer_0.mlp.0.weight"] = torch.zeros(7, 32)
    with pytest.raises(convert.StateDictError) as info:
        convert.from_torch("vit_mini", state, num_outputs=10)
    message = str(info.value)
    assert "encoder.layers.encoder_layer_1.self_attention.in_proj_bias" in message
    assert "encoder.layers.encoder_layer_0.mlp.0.weight" in message


def test_bfloat16_and_deterministic_training_mode():
    model = models.create_model(
        "vit_mini",
        num_outputs=10,
        dtype=jnp.bfloat16,
        dropout_rate=0.1,
        attention_dropout=0.1,
        stochastic_depth_rate=0.3,
    )
    shapes = models.abstract_variables(model, (1, 32, 32, 3))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes["params"]))
    # Random values straight from numpy (no init to compile); the model's zero head would hide every difference.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    variables = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)

    @jax.jit
    def forward(variables, x, key):
        """Training-mode logits (dropout and stochastic depth on) and inference logits."""
        return model.apply(variables, x, train=True, rngs={"dropout": key}), model.apply(variables, x, train=False)

    first, evaluated = forward(variables, x, jax.random.key(2))
    assert first.dtype == evaluated.dtype == jnp.bfloat16 and first.shape == (2, 10)
    as_f32 = lambda a: np.asarray(a, np.float32)
    np.testing.assert_array_equal(as_f32(first), as_f32(forward(variables, x, jax.random.key(2))[0]))
    assert not np.array_equal(as_f32(first), as_f32(forward(variables, x, jax.random.key(3))[0]))
    assert not np.array_equal(as_f32(first), as_f32(evaluated))
    assert np.all(np.isfinite(as_f32(evaluated)))


def test_drop_path_drops_whole_samples_and_rescales():
    x = jnp.ones((1000, 3))
    out = StochasticDepth(0.25).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    rows = np.asarray(out)
    kept = rows[:, 0] != 0
    # Each sample is either all zero or all 1 / 0.75.
    np.testing.assert_allclose(rows[kept], 1 / 0.75, rtol=1e-6)
    assert np.all(rows[~kept] == 0)
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_array_equal(StochasticDepth(0.25).apply({}, x, train=False), x)
    assert np.all(np.asarray(StochasticDepth(1.0).apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})) == 0)


def test_stochastic_depth_rate_grows_linearly_with_depth():
    model = models.create_model("vit_mini", num_outputs=10, num_layers=3, stochastic_depth_rate=0.4)
    rates = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, StochasticDepth):
            rates.append(context.module.rate)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(
            lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=True),
            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
        )
    # Two residual branches per block, at 0, 0.2 and 0.4.
    assert rates == pytest.approx([0.0, 0.0, 0.2, 0.2, 0.4, 0.4])
