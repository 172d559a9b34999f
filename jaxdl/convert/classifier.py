"""A backbone's PyTorch state dict -> the `backbone` of a jaxdl `classifier`; the new dense head keeps its init.

The state dict is the backbone family's own (e.g. torchvision's `vgg19` or
`resnet50`, classifier included: a `features_only` converter ignores it); its
converter fills `backbone`. `dense_{i}` and `head` have no counterpart in it and
are left out of the result, so `config.init_from` keeps their fresh init: the
course's "pre-trained base + new dense head" (freeze the base with
`config.transfer.freeze="^backbone/"`).
"""

from jaxdl.convert import Importer, converters, register
from jaxdl.models.classifier import Classifier


@register(Classifier)
def convert_classifier(importer: Importer, model: Classifier) -> None:
    """Maps the whole state dict to `backbone` by the backbone's converter; the dense layers keep their init."""
    backbone = model.backbone_model()
    table = converters()
    if type(backbone) not in table:
        raise ValueError(f"no PyTorch converter for the backbone {type(backbone).__name__} of {model.backbone}")
    table[type(backbone)](importer.scoped("backbone", ""), backbone)
    for i in range(len(model.head)):
        importer.keep_init(f"params/dense_{i}")
    importer.keep_init("params/head")
