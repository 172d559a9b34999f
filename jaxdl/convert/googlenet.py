"""torchvision GoogLeNet state dicts -> jaxdl GoogLeNet variables."""

from jaxdl.convert import Importer, register
from jaxdl.models.googlenet import _INCEPTION, GoogLeNet

_BRANCHES = ("branch1", "branch2.0", "branch2.1", "branch3.0", "branch3.1", "branch4.1")


def _basic_conv(importer: Importer, path: str, key: str) -> None:
    """BasicConv2d: `key.conv` (no bias) and `key.bn` -> `path/conv`, `path/bn`."""
    importer.conv(f"params/{path}/conv", f"{key}.conv", bias=False)
    importer.batch_norm(f"{path}/bn", f"{key}.bn")


@register(GoogLeNet)
def convert_googlenet(importer: Importer, model: GoogLeNet) -> None:
    """Maps conv1-3, inception*.branch*, aux{1,2}.conv/fc1/fc2 and fc -> head.

    A model without aux heads ignores any aux tensors in the state dict (torchvision's published
    file holds them; `googlenet(weights=...)` drops them the same way); a features_only model
    ignores them and `fc`.
    """
    for name in ("conv1", "conv2", "conv3"):
        _basic_conv(importer, name, name)
    for block in _INCEPTION:
        for branch in _BRANCHES:
            _basic_conv(importer, f"{block}/{branch.replace('.', '_')}", f"{block}.{branch}")
    for aux in ("aux1", "aux2"):
        if model.aux_logits and not model.features_only:
            _basic_conv(importer, f"{aux}/conv", f"{aux}.conv")
            importer.dense(f"params/{aux}/fc1", f"{aux}.fc1", bias=True)
            importer.dense(f"params/{aux}/fc2", f"{aux}.fc2", bias=True)
        else:
            for key in [k for k in importer.tensors if k.startswith(f"{aux}.")]:
                importer.ignore(key)
    if model.features_only:
        importer.ignore_prefix("fc.")
    else:
        importer.dense("params/head", "fc", bias=True)
