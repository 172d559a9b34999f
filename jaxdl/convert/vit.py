"""torchvision VisionTransformer state dicts -> jaxdl ViT variables."""

from __future__ import annotations

from jaxdl.convert import Importer, register
from jaxdl.models.vit import ViT


@register(ViT)
def convert_vit(importer: Importer, model: ViT) -> None:
    """Map torchvision's ViT names (conv_proj, encoder.layers.encoder_layer_<i>..., heads.head) onto `model`."""
    importer.conv("params/conv_proj", "conv_proj", bias=True)
    importer.set("params/class_token", importer.tensor("class_token"), "class_token")
    importer.set("params/pos_embedding", importer.tensor("encoder.pos_embedding"), "encoder.pos_embedding")
    for i in range(model.num_layers):
        key, path = f"encoder.layers.encoder_layer_{i}", f"params/encoder_layer_{i}"
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
    importer.layer_norm("params/encoder_ln", "encoder.ln")
    if model.features_only:
        importer.ignore_prefix("heads.")
    else:
        importer.dense("params/head", "heads.head", bias=True)
