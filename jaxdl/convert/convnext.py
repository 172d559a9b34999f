"""torchvision ConvNeXt state dicts -> jaxdl ConvNeXt variables.

torchvision names: the stem is `features.0.{0 conv, 1 LayerNorm2d}`; stages and
downsampling layers alternate after it, so stage s sits at `features.<2s + 1>` and
the downsampling after it at `features.<2s + 2>.{0 LayerNorm2d, 1 conv}`. Block i of
a stage is `<stage>.<i>.block.{0 depthwise conv, 2 LayerNorm, 3 Linear, 5 Linear}`
plus `<stage>.<i>.layer_scale` of shape (C, 1, 1); the head is
`classifier.{0 LayerNorm2d, 2 Linear}`.
"""

import numpy as np

from jaxdl.convert import Importer, register
from jaxdl.models.convnext import ConvNeXt

# For `jaxdl.convert.inverse`: torch keeps layer_scale as (C, 1, 1), which the converter reshapes to (C,).
TORCH_SHAPES = {"layer_scale": lambda shape: (*shape, 1, 1)}


@register(ConvNeXt)
def convert_convnext(importer: Importer, model: ConvNeXt) -> None:
    """Fills `importer` from a torchvision ConvNeXt state dict."""
    importer.conv("params/stem_conv", "features.0.0", bias=True)
    importer.layer_norm("params/stem_norm", "features.0.1")
    num_stages = len(model.depths)
    for stage, depth in enumerate(model.depths):
        for index in range(depth):
            path = f"params/stage{stage}_{index}"
            key = f"features.{2 * stage + 1}.{index}"
            importer.conv(f"{path}/dwconv", f"{key}.block.0", bias=True)
            importer.layer_norm(f"{path}/norm", f"{key}.block.2")
            importer.dense(f"{path}/pwconv1", f"{key}.block.3", bias=True)
            importer.dense(f"{path}/pwconv2", f"{key}.block.5", bias=True)
            scale = importer.tensor(f"{key}.layer_scale")
            # torch keeps it as (C, 1, 1) to broadcast over NCHW; ours is (C,).
            if scale is not None and scale.ndim == 3 and scale.shape[1:] == (1, 1):
                scale = np.reshape(scale, (scale.shape[0],))
            importer.set(f"{path}/layer_scale", scale, f"{key}.layer_scale")
        if stage < num_stages - 1:
            key = f"features.{2 * stage + 2}"
            importer.layer_norm(f"params/downsample{stage}_norm", f"{key}.0")
            importer.conv(f"params/downsample{stage}_conv", f"{key}.1", bias=True)
    if model.features_only:
        importer.ignore_prefix("classifier.")
        return
    importer.layer_norm("params/head_norm", "classifier.0")
    importer.dense("params/head", "classifier.2", bias=True)
