"""The model registry: each family registers its variants where it defines them; build them by name.

    @register("resnet18", block="basic", stage_sizes=(2, 2, 2, 2))
    @register("resnet34", block="basic", stage_sizes=(3, 4, 6, 3))
    class ResNet(nn.Module): ...

    model = create_model("resnet18", num_outputs=10)

A family also declares the checks of its hyperparameters in a class variable,
`checks = {"dropout_rate": probability, "features": all_positive, "num_layers": at_least_one}`;
`create_model` runs them, so a bad value fails with its field's name before
anything is traced. This module imports no family: `jaxdl.models` discovers
them (see its `__init__`), so a new family is one new file.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import flax.linen as nn

ModuleT = TypeVar("ModuleT", bound=type[nn.Module])

# name -> (module class, default hyperparameters of that variant).
_REGISTRY: dict[str, tuple[type[nn.Module], Mapping[str, Any]]] = {}

# Flax adds these to every Module dataclass; they are not hyperparameters.
_INTERNAL_FIELDS = frozenset({"parent", "name"})


def register(name: str, **defaults: Any) -> Callable[[ModuleT], ModuleT]:
    """Class decorator: registers the decorated module class as model `name` with hyperparameter `defaults`.

    Stack it to register several variants of one class. Registering a taken name
    raises ValueError, unless it is the very same class with the same defaults.
    """

    def decorate(cls: ModuleT) -> ModuleT:
        if name in _REGISTRY:
            old_cls, old_defaults = _REGISTRY[name]
            if old_cls is not cls or dict(old_defaults) != defaults:
                raise ValueError(f"model name {name!r} is already registered by {_qualname(old_cls)}")
        unknown = sorted(set(defaults) - set(_fields(cls)))
        if unknown:
            raise TypeError(
                f"defaults {', '.join(map(repr, unknown))} of model {name!r} are not fields of {cls.__name__}"
            )
        _REGISTRY[name] = (cls, MappingProxyType(dict(defaults)))
        return cls

    return decorate


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _fields(cls: type[nn.Module]) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in _INTERNAL_FIELDS)


def list_models() -> list[str]:
    """The sorted names of all registered models."""
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[type[nn.Module], Mapping[str, Any]]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def model_class(name: str) -> type[nn.Module]:
    """The module class registered as `name`."""
    return _entry(name)[0]


def model_defaults(name: str) -> dict[str, Any]:
    """The hyperparameters that variant `name` sets on its class."""
    return dict(_entry(name)[1])


def model_fields(name: str) -> list[str]:
    """The sorted hyperparameter field names of model `name`."""
    return _fields(model_class(name))


def model_field_types(name: str) -> dict[str, Any]:
    """The hyperparameter fields of model `name` with their type annotations, resolved (typing.Any where unknown)."""
    cls = model_class(name)
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # An annotation that does not resolve: its value is parsed as a literal.
        hints = {}
    return {field: hints.get(field, Any) for field in _fields(cls)}


def model_accepts(name: str, field: str) -> bool:
    """Whether model `name` has a hyperparameter field `field`."""
    return field in model_fields(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate registered model `name` with hyperparameters `kwargs` over the variant's defaults.

    Raises:
      ValueError: unknown name, or a hyperparameter out of its range (the message
        starts with the field, e.g. "dropout_rate=1.5 is not valid; ..."), or
        `features_only=True` for a model that has no feature maps.
      TypeError: a keyword that is not a field of the model.
    """
    cls, hyperparameters = resolve_model(name, **kwargs)
    return cls(**hyperparameters)


def resolve_model(name: str, **kwargs: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The class and the checked hyperparameters `create_model(name, **kwargs)` builds.

    For a model built inside another one under a chosen name: `cls(**hyperparameters, name=...)`.
    """
    cls, defaults = _entry(name)
    fields = _fields(cls)
    if kwargs.get("features_only") and "features_only" not in fields:
        raise no_feature_maps(name)
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise TypeError(
            f"unknown argument(s) {', '.join(map(repr, unknown))} for model {name!r}; valid fields: {', '.join(fields)}"
        )
    hyperparameters = {**defaults, **kwargs}
    check_hyperparameters(cls, hyperparameters)
    return cls, hyperparameters


def list_backbones() -> list[str]:
    """The sorted names of the models that can return feature maps (`features_only=True`)."""
    return [name for name in list_models() if model_accepts(name, "features_only")]


def no_feature_maps(name: str) -> ValueError:
    """The error for asking model `name`, which has no `features_only`, for its feature maps."""
    return ValueError(
        f"model {name!r} has no feature maps (features_only); choose a vision backbone: {', '.join(list_backbones())}"
    )


# Hyperparameter checks: each takes (field, value) and raises ValueError naming the field.
Check = Callable[[str, Any], None]


def _text(value: Any) -> str:
    return repr(tuple(value)) if isinstance(value, Sequence) and not isinstance(value, str) else repr(value)


def _invalid(field: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"{field}={_text(value)} is not valid; {rule}")


def probability(field: str, value: Any) -> None:
    """A probability such as a dropout rate: in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise _invalid(field, value, "it must be in [0, 1)")


def positive(field: str, value: Any) -> None:
    """A channel count or hidden size: > 0 (None means the model's own default)."""
    if value is not None and not value > 0:
        raise _invalid(field, value, "it must be > 0")


def non_negative(field: str, value: Any) -> None:
    """A count where 0 means "none" (e.g. no vocabulary): >= 0."""
    if not value >= 0:
        raise _invalid(field, value, "it must be >= 0")


def all_positive(field: str, value: Any) -> None:
    """A sequence of widths, every one > 0 (it may be empty)."""
    if any(not v > 0 for v in value):
        raise _invalid(field, value, "every width must be > 0")


def at_least_one(field: str, value: Any) -> None:
    """A layer or block count: >= 1."""
    if not value >= 1:
        raise _invalid(field, value, "it must be >= 1")


def all_at_least_one(field: str, value: Any) -> None:
    """A sequence of per-stage layer counts, every one >= 1, and at least one stage."""
    if len(value) == 0 or any(not v >= 1 for v in value):
        raise _invalid(field, value, "every depth must be >= 1 (and there must be at least one)")


def check_hyperparameters(cls: type[nn.Module], hyperparameters: Mapping[str, Any]) -> None:
    """Runs `cls.checks` ({field: check}) on the given hyperparameters (class defaults fill the rest)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    for field, check in getattr(cls, "checks", {}).items():
        value = hyperparameters.get(field, defaults.get(field, dataclasses.MISSING))
        if value is not dataclasses.MISSING:
            check(field, value)


__all__ = [
    "check_hyperparameters",
    "create_model",
    "at_least_one",
    "all_at_least_one",
    "list_backbones",
    "list_models",
    "model_accepts",
    "model_class",
    "model_defaults",
    "model_field_types",
    "model_fields",
    "non_negative",
    "no_feature_maps",
    "probability",
    "register",
    "resolve_model",
    "positive",
    "all_positive",
]
