"""torchvision VisionTransformer state dicts -> jaxdl ViT variables (looped or scanned layout)."""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from jaxdl import models
from jaxdl.convert import Importer, register
from jaxdl.models.vit import SCANNED_LAYERS, ViT


class _LayerCollector(Importer):
    """A view that keeps each block's arrays instead of writing them, so a scanned ViT gets them stacked.

    torchvision stores one tensor per layer; the scanned layout holds one array
    with a leading layer axis. Tensors are read (and marked used) through the
    parent; a tensor whose shape is not one layer's goes to the parent as it is,
    which reports it by name; `flush` writes the stacked arrays.
    """

    def __init__(self, parent: Importer, model: ViT):
        self.parent = parent
        # flax path -> the shape of one layer's slice of the stacked variable.
        template = models.abstract_variables(model, (1, model.image_size, model.image_size, 3))
        self.layer_shapes = {"/".join(k): v.shape[1:] for k, v in traverse_util.flatten_dict(template).items()}
        self.mismatched: set[str] = set()
        # flax path -> [(torch key, array) per layer, in layer order].
        self.layers: dict[str, list[tuple[str, np.ndarray]]] = {}

    def tensor(self, key: str) -> np.ndarray | None:
        """The parent's tensor `key`."""
        return self.parent.tensor(key)

    def has(self, key: str) -> bool:
        """Whether the parent holds `key`."""
        return self.parent.has(key)

    def ignore(self, key: str) -> None:
        """Marks the parent's `key` as used."""
        self.parent.ignore(key)

    def set(self, path: str, value: np.ndarray | None, key: str) -> None:
        """Keeps one layer's `value` for `path` until `flush`; a mis-shaped one is reported now."""
        if value is None:
            return
        if path in self.layer_shapes and tuple(value.shape) != tuple(self.layer_shapes[path]):
            self.mismatched.add(path)
            self.parent.set(path, value, key)
            return
        self.layers.setdefault(path, []).append((key, value))

    def flush(self, num_layers: int) -> None:
        """Writes every path whose layers all arrived with their shape, stacked on a leading layer axis."""
        for path, entries in self.layers.items():
            # A missing or mis-shaped layer's tensor: the parent has recorded its name already.
            if len(entries) == num_layers and path not in self.mismatched:
                self.parent.set(path, np.stack([v for _, v in entries]), entries[0][0])

    def finish(self) -> dict:
        """A view has nothing of its own to finish; the parent checks everything."""
        raise TypeError("finish the Importer this view was made from")


def _encoder_layer(importer: Importer, path: str, key: str) -> None:
    """One torchvision EncoderBlock `key` into flax module `path`."""
    importer.layer_norm(f"{path}/ln_1", f"{key}.ln_1")
    # nn.MultiheadAttention keeps the fused [q; k; v] projection as a (3E, E) matrix.
    weight = importer.tensor(f"{key}.self_attention.in_proj_weight")
    importer.set(
        f"{path}/self_attention/in_proj/kernel",
        None if weight is None else weight.T,
        f"{key}.self_attention.in_proj_weight",
    )
    importer.set(
        f"{path}/self_attention/in_proj/bias",
        importer.tensor(f"{key}.self_attention.in_proj_bias"),
        f"{key}.self_attention.in_proj_bias",
    )
    importer.dense(f"{path}/self_attention/out_proj", f"{key}.self_attention.out_proj", bias=True)
    importer.layer_norm(f"{path}/ln_2", f"{key}.ln_2")
    importer.dense(f"{path}/mlp_0", f"{key}.mlp.0", bias=True)
    importer.dense(f"{path}/mlp_3", f"{key}.mlp.3", bias=True)


@register(ViT)
def convert_vit(importer: Importer, model: ViT) -> None:
    """Map torchvision's ViT names (conv_proj, encoder.layers.encoder_layer_<i>..., heads.head) onto `model`.

    A scanned model (`scan_layers=True`) gets each block's tensors stacked
    under `params/encoder_layers`, the same arrays `stack_layers` makes of a
    looped import.
    """
    importer.conv("params/conv_proj", "conv_proj", bias=True)
    importer.set("params/class_token", importer.tensor("class_token"), "class_token")
    importer.set("params/pos_embedding", importer.tensor("encoder.pos_embedding"), "encoder.pos_embedding")
    collector = _LayerCollector(importer, model) if model.scan_layers else None
    for i in range(model.num_layers):
        key = f"encoder.layers.encoder_layer_{i}"
        if collector is None:
            _encoder_layer(importer, f"params/encoder_layer_{i}", key)
        else:
            _encoder_layer(collector, f"params/{SCANNED_LAYERS}", key)
    if collector is not None:
        collector.flush(model.num_layers)
    importer.layer_norm("params/encoder_ln", "encoder.ln")
    if model.features_only:
        importer.ignore_prefix("heads.")
    else:
        importer.dense("params/head", "heads.head", bias=True)
