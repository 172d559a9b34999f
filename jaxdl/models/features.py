"""Backbones that stop early: a vision model built with `features_only=True` returns its feature maps by stride.

    backbone = create_backbone("resnet18")
    maps = backbone.apply(variables, images, train=False)   # {2: (B, H/2, W/2, 64), 4: ..., 32: ...}
    feature_channels("resnet18")                             # {2: 64, 4: 64, 8: 128, 16: 256, 32: 512}

Every vision family has a `features_only` field (timm's idea): the model then
returns a dict {stride: NHWC map} holding the last map at each stride where one
of its stages ends, builds no pooling and no classifier, and keeps the trunk's
parameter names, so a classifier's weights (less its head) load unchanged. A
decoder (U-Net, a detection neck) attaches to any registered backbone by name
and asks these helpers which strides and channels it gets.
"""

from typing import Any

import flax.linen as nn
import jax

from jaxdl.models.registry import model_accepts, no_feature_maps, resolve_model
from jaxdl.models.variables import default_input_shape, input_dtype


def resolve_backbone(name: str, **kwargs: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The class and checked hyperparameters of backbone `name` with `features_only=True`, nothing built.

    A decoder builds it as a named submodule: `cls(**hyperparameters, name="encoder")`.

    Raises:
      ValueError: an unknown name, or model `name` has no feature maps (e.g. "lstm"),
        naming the models that have.
      TypeError: a keyword that is not a field of the backbone.
    """
    if not model_accepts(name, "features_only"):
        raise no_feature_maps(name)
    # No head is built, so the class count is never used.
    kwargs.setdefault("num_outputs", 0)
    return resolve_model(name, **{**kwargs, "features_only": True})


class OnBackbone:
    """Mixin of a model built on a registered backbone (U-Net's encoder, the classifier's trunk).

    The model has the fields `backbone` (a registered name), `backbone_kwargs`
    and `dtype`; the backbone is checked when the model is constructed, and
    `backbone_model()` is the standalone module whose variables the model keeps
    under its submodule (what the weight converters fill).
    """

    def __post_init__(self) -> None:
        """Check the backbone at construction: it must exist and have feature maps."""
        self.backbone_spec()
        super().__post_init__()

    def backbone_spec(self) -> tuple[type[nn.Module], dict[str, Any]]:
        """The backbone's class and hyperparameters (with `features_only=True` and this model's dtype)."""
        return resolve_backbone(self.backbone, **{"dtype": self.dtype, **dict(self.backbone_kwargs or {})})

    def backbone_model(self) -> nn.Module:
        """The backbone as a standalone module."""
        cls, hyperparameters = self.backbone_spec()
        return cls(**hyperparameters, parent=None)


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Registered vision model `name` with `features_only=True` (`num_outputs` is not needed: no head is built)."""
    cls, hyperparameters = resolve_backbone(name, **kwargs)
    return cls(**hyperparameters)


def _as_backbone(backbone: nn.Module | str, kwargs: dict[str, Any]) -> nn.Module:
    if isinstance(backbone, str):
        return create_backbone(backbone, **kwargs)
    if not getattr(backbone, "features_only", False):
        raise ValueError(f"{type(backbone).__name__} was not built with features_only=True, so it returns no maps")
    return backbone


def feature_shapes(
    backbone: nn.Module | str, input_shape: tuple[int, ...] | None = None, **kwargs: Any
) -> dict[int, jax.ShapeDtypeStruct]:
    """{stride: shape of that map} for a backbone (a model or a registered name built with `kwargs`), by tracing.

    `input_shape` defaults to one image at the model's `image_size` (else 224).
    Nothing is compiled or allocated (`jax.eval_shape`).
    """
    model = _as_backbone(backbone, kwargs)
    shape = tuple(input_shape or default_input_shape(model))
    sample = jax.ShapeDtypeStruct(shape, input_dtype(model))
    maps = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0], sample)
    return dict(sorted(maps.items()))


def feature_channels(
    backbone: nn.Module | str, input_shape: tuple[int, ...] | None = None, **kwargs: Any
) -> dict[int, int]:
    """{stride: channels} of a backbone's feature maps (see `feature_shapes`)."""
    return {stride: shape.shape[-1] for stride, shape in feature_shapes(backbone, input_shape, **kwargs).items()}


def feature_strides(
    backbone: nn.Module | str, input_shape: tuple[int, ...] | None = None, **kwargs: Any
) -> tuple[int, ...]:
    """The strides, ascending, at which a backbone returns feature maps (see `feature_shapes`)."""
    return tuple(feature_shapes(backbone, input_shape, **kwargs))


__all__ = ["create_backbone", "feature_channels", "feature_shapes", "feature_strides", "resolve_backbone"]
