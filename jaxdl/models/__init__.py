"""Model registry: build Flax models by name and inspect their parameters."""

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxdl.models import ar, cnn, convnext, densenet, efficientnet, googlenet, linear, mlp, resnet, rnn, vgg, vit
from jaxdl.models.cnn import CNN
from jaxdl.models.convnext import ConvNeXt
from jaxdl.models.densenet import DenseNet
from jaxdl.models.efficientnet import EfficientNet
from jaxdl.models.googlenet import GoogLeNet
from jaxdl.models.linear import LogisticRegression
from jaxdl.models.mlp import MLP
from jaxdl.models.resnet import ResNet
from jaxdl.models.summary import flops, summary
from jaxdl.models.vgg import VGG
from jaxdl.models.vit import ViT

__all__ = [
    "CNN",
    "ConvNeXt",
    "DenseNet",
    "EfficientNet",
    "GoogLeNet",
    "MLP",
    "LogisticRegression",
    "ResNet",
    "VGG",
    "ViT",
    "count_params",
    "create_model",
    "flops",
    "list_models",
    "model_accepts",
    "model_defaults",
    "model_fields",
    "summary",
]

# Each family module holds `REGISTRY = {name: (ModuleClass, default hyperparameters)}`,
# so one class serves several published variants (resnet18 ... resnet152).
_FAMILIES = (
    linear,
    mlp,
    cnn,
    vit,
    resnet,
    vgg,
    efficientnet,
    convnext,
    densenet,
    googlenet,
    rnn,
    ar,
)


def _collect() -> Mapping[str, tuple[type[nn.Module], Mapping[str, Any]]]:
    registry: dict[str, tuple[type[nn.Module], Mapping[str, Any]]] = {}
    for family in _FAMILIES:
        for name, (cls, defaults) in family.REGISTRY.items():
            if name in registry:
                raise RuntimeError(f"model name {name!r} is registered twice")
            registry[name] = (cls, MappingProxyType(dict(defaults)))
    return registry


# Read-only so no caller can register models at runtime behind our back.
_REGISTRY = MappingProxyType(_collect())

# Flax adds these to every Module dataclass; they are not hyperparameters.
_INTERNAL_FIELDS = frozenset({"parent", "name"})


def list_models() -> list[str]:
    """Return the sorted names of all registered models."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> type[nn.Module]:
    """Return the model class registered as `name` or raise ValueError."""
    return _entry(name)[0]


def model_defaults(name: str) -> dict[str, Any]:
    """The hyperparameters that variant `name` sets on its class."""
    return dict(_entry(name)[1])


def _entry(name: str) -> tuple[type[nn.Module], Mapping[str, Any]]:
    try:
        return _REGISTRY[name]
    except KeyError:
        choices = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; choose one of: {choices}") from None


def model_fields(name: str) -> list[str]:
    """Return the sorted hyperparameter field names of model `name`."""
    cls = _lookup(name)
    return sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in _INTERNAL_FIELDS)


def model_accepts(name: str, field: str) -> bool:
    """Return whether model `name` has a hyperparameter field `field`."""
    return field in model_fields(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate registered model `name` with hyperparameters `kwargs`."""
    cls = _lookup(name)
    fields = model_fields(name)
    # The training loop passes axis_name to every model under pmap; only
    # models with BatchNorm need it, so others drop it silently.
    if "axis_name" in kwargs and "axis_name" not in fields:
        kwargs.pop("axis_name")
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise TypeError(
            f"unknown argument(s) {', '.join(map(repr, unknown))} for model {name!r}; valid fields: {', '.join(fields)}"
        )
    return cls(**{**model_defaults(name), **kwargs})


def count_params(params: Any) -> int:
    """Return the total number of scalars in a params pytree."""
    leaves = jax.tree_util.tree_leaves(params)
    return int(sum(np.size(leaf) for leaf in leaves))
