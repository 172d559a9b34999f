"""segmentation_models_pytorch `smp.Unet` state dicts -> jaxdl UNetWithBackbone variables (`unet_resnet18`, ...).

smp names: the encoder's tensors are its torchvision names under `encoder.`
(without `fc`); decoder block i is `decoder.blocks.<i>.conv{1,2}.{0 conv, 1 BatchNorm}`,
the optional center block `decoder.center.{0,1}.{0,1}`, and the head
`segmentation_head.0`. The encoder goes through its own family's converter.
"""

from jaxdl.convert import Importer, converters, register
from jaxdl.models.unet import UNetWithBackbone


def _conv_block(importer: Importer, path: str, keys: tuple[str, str]) -> None:
    """A ConvBlock with BatchNorm: keys[k] holds conv `.0` (no bias) and BatchNorm `.1` of conv k + 1."""
    for k, key in enumerate(keys, start=1):
        importer.conv(f"params/{path}/conv{k}", f"{key}.0", bias=False)
        importer.batch_norm(f"{path}/bn{k}", f"{key}.1")


@register(UNetWithBackbone)
def convert_backbone_unet(importer: Importer, model: UNetWithBackbone) -> None:
    """Maps encoder.* (by the backbone's converter), decoder.center/blocks.* and segmentation_head.0 -> head."""
    backbone = model.backbone_model()
    table = converters()
    if type(backbone) not in table:
        raise ValueError(f"no PyTorch converter for the backbone {type(backbone).__name__} of {model.backbone}")
    table[type(backbone)](importer.scoped("encoder", "encoder."), backbone)
    if model.center_block:
        _conv_block(importer, "center", ("decoder.center.0", "decoder.center.1"))
    for i in range(len(model.decoder_channels)):
        key = f"decoder.blocks.{i}"
        _conv_block(importer, f"decoder_block{i}", (f"{key}.conv1", f"{key}.conv2"))
    importer.conv("params/head", "segmentation_head.0", bias=True)
