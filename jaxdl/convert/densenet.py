"""torchvision DenseNet state dicts -> jaxdl DenseNet variables."""

from jaxdl.convert import Importer, register
from jaxdl.models.densenet import DenseNet


def _layer_key(importer: Importer, prefix: str, name: str) -> str:
    """`prefix.norm1`, or the pre-0.4 spelling `prefix.norm.1` that torchvision's published files still use."""
    current, legacy = f"{prefix}.{name}", f"{prefix}.{name[:-1]}.{name[-1]}"
    if not importer.has(f"{current}.weight") and importer.has(f"{legacy}.weight"):
        return legacy
    return current


@register(DenseNet)
def convert_densenet(importer: Importer, model: DenseNet) -> None:
    """Maps features.conv0/norm0, features.denseblock{i}.denselayer{j}.{norm,conv}{1,2},
    features.transition{i}.{norm,conv}, features.norm5 and classifier -> head."""
    importer.conv("params/conv0", "features.conv0", bias=False)
    importer.batch_norm("norm0", "features.norm0")
    for i, num_layers in enumerate(model.block_config, start=1):
        for j in range(1, num_layers + 1):
            path, prefix = f"denseblock{i}/denselayer{j}", f"features.denseblock{i}.denselayer{j}"
            for k in (1, 2):
                importer.batch_norm(f"{path}/norm{k}", _layer_key(importer, prefix, f"norm{k}"))
                importer.conv(f"params/{path}/conv{k}", _layer_key(importer, prefix, f"conv{k}"), bias=False)
        if i != len(model.block_config):
            importer.batch_norm(f"transition{i}/norm", f"features.transition{i}.norm")
            importer.conv(f"params/transition{i}/conv", f"features.transition{i}.conv", bias=False)
    importer.batch_norm("norm5", "features.norm5")
    if model.features_only:
        importer.ignore_prefix("classifier.")
    else:
        importer.dense("params/head", "classifier", bias=True)
