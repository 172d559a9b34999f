"""torchvision VGG state dicts -> jaxdl VGG variables."""

from jaxdl.convert import Importer, register
from jaxdl.models.vgg import VGG, feature_layers


@register(VGG)
def convert_vgg(importer: Importer, model: VGG) -> None:
    """Maps features.N (conv and BatchNorm by torch index), classifier.0/3 and classifier.6 -> head."""
    for layer in feature_layers(model.config, model.batch_norm):
        if layer.kind != "conv":
            continue
        importer.conv(f"params/features_{layer.index}", f"features.{layer.index}", bias=True)
        if model.batch_norm:
            importer.batch_norm(f"features_{layer.index + 1}", f"features.{layer.index + 1}")
    if model.features_only:  # No classifier: a classifier's state dict still loads.
        importer.ignore_prefix("classifier.")
        return
    importer.dense("params/classifier_0", "classifier.0", bias=True)
    importer.dense("params/classifier_3", "classifier.3", bias=True)
    importer.dense("params/head", "classifier.6", bias=True)
