"""U-Net: the paper's network (sizes, parameter count, options) and smp.Unet's decoder on any backbone (parity)."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import convert, models
from jaxdl.models.unet import valid_output_size

# smp needs no network with encoder_weights=None; make sure it never tries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _output_and_params(name: str, shape: tuple, **kwargs) -> tuple[tuple, int]:
    """Output shape and parameter count, by tracing only."""
    model = models.create_model(name, **kwargs)
    out, variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False), jax.ShapeDtypeStruct(shape, jnp.float32)
    )
    return out.shape, models.count_params(variables["params"])


def _init(model, x: jax.Array) -> dict:
    """The model's own init, jitted and with the "rbg" PRNG: XLA on CPU compiles threefry's normals slowly."""
    return jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)


# --------------------------------------------------------------------------
# The paper's U-Net
# --------------------------------------------------------------------------


def test_paper_unet_has_31_030_658_parameters_and_maps_572_to_388() -> None:
    assert _output_and_params("unet", (1, 572, 572, 1), num_outputs=2) == ((1, 388, 388, 2), 31_030_658)
    assert valid_output_size(572, 4) == 388


def test_padding_same_keeps_the_size() -> None:
    assert _output_and_params("unet", (1, 64, 96, 1), num_outputs=2, padding="same")[0] == (1, 64, 96, 2)
    assert _output_and_params("unet_tiny", (2, 32, 48, 3), num_outputs=4)[0] == (2, 32, 48, 4)
    # Same weights as the unpadded net: padding changes no shape of a kernel.
    assert _output_and_params("unet", (1, 64, 64, 1), num_outputs=2, padding="same")[1] == 31_030_658


def test_width_and_depth_options() -> None:
    shape, params = _output_and_params("unet", (1, 32, 32, 3), num_outputs=3, width=4, depth=2, padding="same")
    assert shape == (1, 32, 32, 3)
    assert params == sum(
        (
            3 * 9 * 4 + 4 + 4 * 9 * 4 + 4,  # down0
            4 * 9 * 8 + 8 + 8 * 9 * 8 + 8,  # down1
            8 * 9 * 16 + 16 + 16 * 9 * 16 + 16,  # bottom
            16 * 4 * 8 + 8,  # upconv1
            16 * 9 * 8 + 8 + 8 * 9 * 8 + 8,  # up1
            8 * 4 * 4 + 4,  # upconv0
            8 * 9 * 4 + 4 + 4 * 9 * 4 + 4,  # up0
            4 * 3 + 3,  # head
        )
    )


@pytest.mark.parametrize(
    ("kwargs", "shape", "message"),
    [
        (
            {"padding": "same"},
            (1, 40, 64, 1),
            "padding='same' and depth=4 needs an input size divisible by 16; got 40x64",
        ),
        ({}, (1, 570, 570, 1), "got 570x570 (try 556 or 572, or padding='same')"),
    ],
)
def test_input_sizes_that_do_not_fit_the_pools_say_so(kwargs: dict, shape: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _output_and_params("unet", shape, num_outputs=2, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0}, "width=0 is not valid; it must be > 0"),
        ({"depth": 0}, "depth=0 is not valid; it must be >= 1"),
        ({"padding": "full"}, "padding='full' is not valid; choose one of: valid, same"),
    ],
)
def test_unet_hyperparameter_checks(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        models.create_model("unet", num_outputs=2, **kwargs)


def test_unet_tiny_runs_with_and_without_batch_norm() -> None:
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    for batch_norm in (False, True):
        model = models.create_model("unet_tiny", num_outputs=3, batch_norm=batch_norm)
        variables = _init(model, x)
        assert ("batch_stats" in variables) == batch_norm
        assert ("bias" in variables["params"]["down0"]["conv1"]) == (not batch_norm)
        out, updates = jax.jit(lambda v, x, m=model: m.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
        assert out.shape == (2, 16, 16, 3) and bool(jnp.all(jnp.isfinite(out)))
        assert set(updates) == ({"batch_stats"} if batch_norm else set())


# --------------------------------------------------------------------------
# smp.Unet's decoder on a registered backbone
# --------------------------------------------------------------------------


def test_backbone_unet_shapes_and_any_backbone() -> None:
    assert _output_and_params("unet_resnet_tiny", (2, 64, 96, 3), num_outputs=5)[0] == (2, 64, 96, 5)
    assert _output_and_params("unet_resnet18", (1, 64, 64, 3), num_outputs=3)[0] == (1, 64, 64, 3)
    # Other families attach by name; fewer strides mean fewer decoder blocks.
    kwargs = {"num_outputs": 2, "decoder_channels": (16, 8, 8, 4, 4)}
    assert _output_and_params("unet_resnet18", (1, 32, 32, 3), backbone="convnext_mini", **kwargs)[0] == (1, 32, 32, 2)
    vgg = {"num_outputs": 2, "decoder_channels": (8, 8, 4)}  # vgg_tiny reaches stride 8.
    assert _output_and_params("unet_resnet18", (1, 32, 32, 3), backbone="vgg_tiny", center_block=True, **vgg)[0] == (
        1,
        32,
        32,
        2,
    )
    vit = {"num_outputs": 2, "backbone": "vit_mini", "decoder_channels": (16, 8, 4)}
    assert _output_and_params("unet_resnet18", (1, 32, 32, 3), **vit)[0] == (1, 32, 32, 2)
    cifar = {"backbone": "resnet_tiny", "backbone_kwargs": {"cifar_stem": True}, "decoder_channels": (16, 8, 4)}
    assert _output_and_params("unet_resnet18", (1, 32, 32, 3), num_outputs=2, **cifar)[0] == (1, 32, 32, 2)


def test_backbone_without_feature_maps_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"^model 'lstm' has no feature maps \(features_only\); choose a vision"):
        models.create_model("unet_resnet18", num_outputs=2, backbone="lstm")
    with pytest.raises(ValueError, match=r"^unknown model 'resnet19'"):
        models.create_model("unet_resnet18", num_outputs=2, backbone="resnet19")
    with pytest.raises(ValueError, match=r"^decoder_channels=\(8, 0\) is not valid; every width must be > 0"):
        models.create_model("unet_resnet18", num_outputs=2, decoder_channels=(8, 0))


def test_backbone_unet_input_size_and_decoder_depth_errors() -> None:
    with pytest.raises(ValueError, match="needs an input size divisible by 32 .*; got 48x64"):
        _output_and_params("unet_resnet_tiny", (1, 48, 64, 3), num_outputs=2)
    with pytest.raises(ValueError, match=r"decoder_channels=\(8, 4\) is not valid; resnet_tiny reaches stride 32"):
        _output_and_params("unet_resnet_tiny", (1, 64, 64, 3), num_outputs=2, decoder_channels=(8, 4))


def test_backbone_unet_tiny_trains() -> None:
    """A training-mode forward updates the BatchNorm statistics of the encoder and of the decoder."""
    model = models.create_model("unet_resnet_tiny", num_outputs=3)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    variables = _init(model, x)
    out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    assert out.shape == (2, 64, 64, 3)
    assert {"encoder", "decoder_block0", "decoder_block4"} <= set(updates["batch_stats"])


# --------------------------------------------------------------------------
# Parity with segmentation_models_pytorch
# --------------------------------------------------------------------------


def _smp_unet(encoder: str, classes: int, seed: int = 0):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    return smp.Unet(encoder_name=encoder, encoder_weights=None, classes=classes)


@pytest.mark.parametrize("depth", [18, 34])
def test_imported_smp_unet_gives_smp_logits(depth: int) -> None:
    torch = pytest.importorskip("torch")
    from tests.torch_reference import randomize_norm_stats

    reference = _smp_unet(f"resnet{depth}", classes=3).eval()
    randomize_norm_stats(reference, seed=depth)
    x = np.random.default_rng(depth).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    model = models.create_model(f"unet_resnet{depth}", num_outputs=3)
    variables = convert.from_torch(model, reference.state_dict(), input_shape=(1, 64, 64, 3))
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x.transpose(0, 2, 3, 1)))
    assert ours.shape == expected.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_parameter_counts_equal_smp(depth: int) -> None:
    reference = _smp_unet(f"resnet{depth}", classes=3)
    expected = sum(p.numel() for p in reference.parameters())
    assert _output_and_params(f"unet_resnet{depth}", (1, 64, 64, 3), num_outputs=3)[1] == expected


def test_smp_import_names_a_missing_or_extra_tensor() -> None:
    state = {k: v for k, v in _smp_unet("resnet18", classes=2).state_dict().items()}
    model = models.create_model("unet_resnet18", num_outputs=2)
    del state["decoder.blocks.1.conv2.1.running_var"]
    state["decoder.blocks.9.conv1.0.weight"] = state["segmentation_head.0.bias"]
    with pytest.raises(convert.StateDictError) as info:
        convert.from_torch(model, state, input_shape=(1, 64, 64, 3))
    message = str(info.value)
    assert "missing tensor 'decoder.blocks.1.conv2.1.running_var'" in message
    assert "unexpected tensor 'decoder.blocks.9.conv1.0.weight'" in message
