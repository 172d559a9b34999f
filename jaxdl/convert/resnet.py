"""torchvision ResNet state dicts -> jaxdl ResNet variables (also the plain nets, which lack `downsample`)."""

from jaxdl.convert import Importer, register
from jaxdl.models.resnet import EXPANSION, ResNet, block_specs


@register(ResNet)
def convert_resnet(importer: Importer, model: ResNet) -> None:
    """Maps conv1/bn1, layer{i}.{j}.conv{k}/bn{k}, layer{i}.{j}.downsample.0/1 and fc (ignored if features_only)."""
    importer.conv("params/conv1", "conv1", bias=False)
    importer.batch_norm("bn1", "bn1")
    num_convs = 2 if EXPANSION[model.block] == 1 else 3
    for spec in block_specs(model):
        key, path = f"layer{spec.stage}.{spec.index}", f"layer{spec.stage}_{spec.index}"
        for k in range(1, num_convs + 1):
            importer.conv(f"params/{path}/conv{k}", f"{key}.conv{k}", bias=False)
            importer.batch_norm(f"{path}/bn{k}", f"{key}.bn{k}")
        if spec.projection:
            importer.conv(f"params/{path}/downsample_0", f"{key}.downsample.0", bias=False)
            importer.batch_norm(f"{path}/downsample_1", f"{key}.downsample.1")
    if model.features_only:
        importer.ignore_prefix("fc.")
    else:
        importer.dense("params/head", "fc", bias=True)
