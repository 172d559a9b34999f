"""torchvision EfficientNet (B0-B7) state dicts -> jaxdl EfficientNet variables.

torchvision names: the stem is `features.0.{0 conv, 1 bn}`; block i of stage s is
`features.<s>.<i>.block.<k>` with k counting the block's layers in order
([expand], depthwise, SE with `fc1`/`fc2`, project), each conv layer holding
`.0` (conv) and `.1` (BatchNorm); the last 1x1 conv is `features.<stages + 1>`
and the head is `classifier.1`.
"""

from jaxdl.convert import Importer, register
from jaxdl.models.efficientnet import EfficientNet


def _conv_bn(importer: Importer, path: str, key: str) -> None:
    importer.conv(f"params/{path}_conv", f"{key}.0", bias=False)
    importer.batch_norm(f"{path}_bn", f"{key}.1")


@register(EfficientNet)
def convert_efficientnet(importer: Importer, model: EfficientNet) -> None:
    """Fills `importer` from a torchvision EfficientNet state dict."""
    _conv_bn(importer, "stem", "features.0")
    for spec in model.block_specs():
        path = f"stage{spec.stage}_{spec.index}"
        key = f"features.{spec.stage}.{spec.index}.block"
        layer = 0
        if spec.has_expand:
            _conv_bn(importer, f"{path}/expand", f"{key}.{layer}")
            layer += 1
        _conv_bn(importer, f"{path}/depthwise", f"{key}.{layer}")
        importer.conv(f"params/{path}/se/fc1", f"{key}.{layer + 1}.fc1", bias=True)
        importer.conv(f"params/{path}/se/fc2", f"{key}.{layer + 1}.fc2", bias=True)
        _conv_bn(importer, f"{path}/project", f"{key}.{layer + 2}")
    last = f"features.{len(model.block_setting) + 1}"
    if model.features_only:  # Neither the last 1x1 conv nor the classifier is built.
        importer.ignore_prefix(f"{last}.")
        importer.ignore_prefix("classifier.")
        return
    _conv_bn(importer, "head", last)
    importer.dense("params/head", "classifier.1", bias=True)
