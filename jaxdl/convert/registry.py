"""Which converter imports PyTorch weights into which model class; each converter registers itself.

@register(ResNet)
def convert_resnet(importer: Importer, model: ResNet) -> None: ...
"""

from collections.abc import Callable

import flax.linen as nn

Converter = Callable[..., None]

# model class -> converter(importer, model).
_CONVERTERS: dict[type[nn.Module], Converter] = {}


def register(model_class: type[nn.Module]) -> Callable[[Converter], Converter]:
    """Function decorator: the decorated function converts torch state dicts for `model_class`.

    A second, different converter for the same class raises ValueError.
    """

    def decorate(fn: Converter) -> Converter:
        old = _CONVERTERS.get(model_class)
        if old is not None and old is not fn:
            raise ValueError(f"{model_class.__name__} already has a PyTorch converter, {old.__module__}.{old.__name__}")
        _CONVERTERS[model_class] = fn
        return fn

    return decorate


def registered() -> dict[type[nn.Module], Converter]:
    """A copy of the model class -> converter table, as registered so far."""
    return dict(_CONVERTERS)
