"""Models by name: every module of this package that registers a family is imported here, so each is found.

    model = jaxdl.models.create_model("resnet18", num_outputs=10)

A family is one file that decorates its module class with `@register(name,
**defaults)` (see `registry`); no list names the families. Modules that
register nothing (`features`, `layers`, `registry`, `summary`, `variables`) are imported too.
`create_backbone(name)` builds a vision model that returns its feature maps
({stride: NHWC map}, see `features`) for decoders such as `unet_resnet34`.
Import a family's class from its module, e.g. `jaxdl.models.resnet.ResNet`.
"""

import importlib
import pkgutil

from jaxdl.models import layers
from jaxdl.models.features import create_backbone, feature_channels, feature_shapes, feature_strides
from jaxdl.models.registry import (
    create_model,
    list_backbones,
    list_models,
    model_accepts,
    model_class,
    model_defaults,
    model_field_types,
    model_fields,
    register,
)
from jaxdl.models.summary import flops, summary
from jaxdl.models.variables import abstract_variables, count_params, default_input_shape, input_dtype


def _import_families() -> None:
    """Imports every module of this package, which registers the models each defines."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


_import_families()

__all__ = [
    "abstract_variables",
    "count_params",
    "create_backbone",
    "create_model",
    "default_input_shape",
    "feature_channels",
    "feature_shapes",
    "feature_strides",
    "flops",
    "input_dtype",
    "layers",
    "list_backbones",
    "list_models",
    "model_accepts",
    "model_class",
    "model_defaults",
    "model_field_types",
    "model_fields",
    "register",
    "summary",
]
