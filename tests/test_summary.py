"""Model summaries and FLOPs (XLA's cost analysis) against torchvision's published and counted numbers."""

import importlib.util
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.vision_transformer import VisionTransformer

from jaxdl import models
from jaxdl.models.summary import analyze, lowered_flops

TABLE_SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "model_table.py"

# torchvision publishes multiply-accumulates as "_ops" (GMACs); XLA counts a multiply-add as 2 FLOPs.
PUBLISHED_GMACS = {
    "vit_b_16": torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1,
    "vit_b_32": torchvision.models.ViT_B_32_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}


def _relative_gap(ours: float, reference: float) -> float:
    return abs(ours - reference) / reference


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_forward_flops_match_torchvision_published_gmacs(name):
    reference = 2 * PUBLISHED_GMACS[name].meta["_ops"] * 1e9
    assert _relative_gap(models.flops(name), reference) < 0.05


def test_vit_s_16_flops_match_torch_flop_counter():
    """vit_s_16 is not in torchvision: count its torchvision-built twin with torch's FlopCounterMode (meta tensors)."""
    with torch.device("meta"):
        reference_model = VisionTransformer(224, 16, 12, 6, 384, 1536, num_classes=1000).eval()
        image = torch.empty(1, 3, 224, 224)
    counter = FlopCounterMode(display=False)
    with counter:
        reference_model(image)
    reference = counter.get_total_flops()
    assert reference > 9e9  # about 4.6 GMACs, as published for DeiT-S
    assert _relative_gap(models.flops("vit_s_16"), reference) < 0.05


def test_flops_follow_input_size_and_kwargs():
    small = models.flops("vit_mini")
    # Four times as many patches: the patch embedding and the token-wise layers cost about 4x, attention ~16x.
    assert 3.5 * small < models.flops("vit_mini", input_size=64, image_size=64) < 8 * small
    assert models.flops("vit_mini", num_layers=4) > 1.6 * small


def test_convolutions_are_charged_only_for_taps_on_real_input():
    """XLA's convention, documented in jaxdl/models/summary.py: no multiply-adds on zero padding."""
    conv = nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
    sample = jax.ShapeDtypeStruct((1, 7, 7, 8), jnp.float32)
    variables = jax.eval_shape(lambda x: conv.init(jax.random.key(0), x), sample)
    # Per output row/column, 3 taps minus one at each border: 19 of 21 land on the 7x7 input.
    assert lowered_flops(conv.apply, variables, sample) == 2 * 19 * 19 * 8 * 16


def test_layer_table_of_vit_mini():
    model = models.create_model("vit_mini", num_outputs=10)
    table = analyze(model, (1, 32, 32, 3), name="vit_mini")
    rows = {row.name: row for row in table.rows}
    assert list(rows) == ["conv_proj", "Dropout_0", "encoder_layer_0", "encoder_layer_1", "encoder_ln", "head"]
    # The head sees the class token only: a (1, 32) x (32, 10) product plus the bias.
    assert rows["head"].flops == 2 * 32 * 10 + 10
    assert rows["head"].params == 32 * 10 + 10
    # 16 patches of 8x8x3 pixels projected to 32 features, plus the bias.
    assert rows["conv_proj"].flops == 2 * 16 * 192 * 32 + 16 * 32
    assert rows["encoder_layer_0"].flops == rows["encoder_layer_1"].flops > 0
    assert rows["Dropout_0"].flops == 0
    # The class token and position embedding belong to the top level.
    assert table.own_params == 32 + 17 * 32
    assert table.total_params == models.count_params(models.abstract_variables(model, (1, 32, 32, 3))["params"])
    assert table.total_flops == models.flops("vit_mini", num_outputs=10)
    # Class-token concatenation and position-embedding add: one add per token feature.
    assert table.other_flops() == 17 * 32
    text = models.summary("vit_mini", num_outputs=10)
    assert "| encoder_layer_1 | EncoderBlock | (1, 17, 32) | 8,544 |" in text
    assert f"| **total** | | (1, 10) | {table.total_params:,} |" in text


class _WithAuxiliary(nn.Module):
    """A head plus an auxiliary head that only training uses, like GoogLeNet's."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        features = nn.Dense(8, name="body")(x)
        out = nn.Dense(3, name="head")(features)
        if train or self.is_initializing():
            out = out + nn.Dense(3, name="aux")(features)
        return out


def test_submodules_skipped_at_inference_keep_their_params():
    table = analyze(_WithAuxiliary(), (1, 2, 2, 3))
    rows = {row.name: row for row in table.rows}
    assert rows["aux"].params == 8 * 3 + 3 and rows["aux"].flops == 0
    assert rows["aux"].kind == "(not called at inference)"
    assert table.total_flops == rows["body"].flops + rows["head"].flops
    assert table.own_params == 0


def _load_table_script():
    spec = importlib.util.spec_from_file_location("model_table", TABLE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_table_script(tmp_path):
    out = tmp_path / "table.md"
    text = _load_table_script().main(["--names", "vit_mini,vit_b_32,googlenet,mlp", "--out", str(out)])
    assert out.read_text() == text
    lines = text.splitlines()
    assert lines[0].startswith("| model | params | GFLOPs (XLA) | GFLOPs (2 x MACs) | input | reference params |")
    mini = next(line for line in lines if line.startswith("| vit_mini |"))
    assert mini.startswith("| vit_mini | 56,904 |") and mini.endswith("| 32x32 | - | - | - |")
    b32 = next(line for line in lines if line.startswith("| vit_b_32 |"))
    published = torchvision.models.ViT_B_32_Weights.IMAGENET1K_V1.meta["num_params"]
    assert f"| 224x224 | {published:,} |" in b32 and b32.endswith("| ✓ |")
    googlenet = next(line for line in lines if line.startswith("| googlenet |"))
    assert googlenet.startswith("| googlenet | 6,624,904 |") and googlenet.endswith("| ✓ |")  # Without aux heads.
    assert "Skipped (no image_size, so no fixed input): mlp" in text


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet18", {}),
        ("resnet50", {}),
        ("vgg16", {}),
        ("densenet121", {}),
        ("googlenet", {"aux_logits": False}),
        ("efficientnet_b0", {}),
        ("convnext_tiny", {}),
        ("vit_b_16", {}),
    ],
)
def test_mac_flops_match_torchvision_published_gmacs_within_half_a_percent(name, kwargs):
    from jaxdl.models.summary import mac_flops

    published = 2e9 * torchvision.models.get_model_weights(name).DEFAULT.meta["_ops"]
    assert mac_flops(name, **kwargs) == pytest.approx(published, rel=5e-3)
