"""Ultralytics `DetectionModel` state dicts (YOLOv8, YOLO11) -> jaxdl YOLOv8 / YOLO11 variables.

Ultralytics names layer i of the yaml `model.{i}`; a conv-BN is `<prefix>.conv` +
`<prefix>.bn`; blocks keep their attribute names (`cv1`, `cv2`, `cv3`, `m.{j}`,
`attn.qkv`, `ffn.{k}`). The Detect layer (`model.22` for YOLOv8, `model.23` for
YOLO11) has the box branches `cv2.{level}.{k}`, the class branches
`cv3.{level}.{k}` (YOLO11: `cv3.{level}.{k}.{0,1}`, depthwise then pointwise) and
the DFL's fixed bins `dfl.conv.weight`, imported as `head/dfl`. BatchNorm's
`num_batches_tracked` has no counterpart.

To fine-tune with another class count, import with `skip_mismatched=True`: the
class-logit convs `head/cls_{l}_2` keep the model's own init. The class branch's
hidden width depends on the class count (max(c_P3, min(classes, 100))), so for
yolov8n/yolo11n from 80 classes also set the model's `class_channels=80`, or
those hidden layers keep their init too.
"""

from jaxdl.convert import Importer, register
from jaxdl.models.yolo import YOLO11, LayerSpec, YOLOv8


def _conv_bn(importer: Importer, path: str, key: str) -> None:
    """A `ConvBN` at flax `path` from Ultralytics' `Conv` at torch `key`."""
    importer.conv(f"params/{path}/conv", f"{key}.conv", bias=False)
    importer.batch_norm(f"{path}/bn", f"{key}.bn")


def _bottleneck(importer: Importer, path: str, key: str) -> None:
    for conv in ("cv1", "cv2"):
        _conv_bn(importer, f"{path}/{conv}", f"{key}.{conv}")


def _c3k(importer: Importer, path: str, key: str, repeats: int = 2) -> None:
    for conv in ("cv1", "cv2", "cv3"):
        _conv_bn(importer, f"{path}/{conv}", f"{key}.{conv}")
    for j in range(repeats):
        _bottleneck(importer, f"{path}/m_{j}", f"{key}.m.{j}")


def _psa_block(importer: Importer, path: str, key: str) -> None:
    for conv in ("qkv", "proj", "pe"):
        _conv_bn(importer, f"{path}/attn/{conv}", f"{key}.attn.{conv}")
    for k in range(2):
        _conv_bn(importer, f"{path}/ffn_{k}", f"{key}.ffn.{k}")


def _layer(importer: Importer, spec: LayerSpec) -> None:
    """One scaled yaml layer `model_{i}` from torch `model.{i}` (upsample and concat have no weights)."""
    path, key = f"model_{spec.index}", f"model.{spec.index}"
    if spec.kind == "conv":
        _conv_bn(importer, path, key)
    elif spec.kind in ("c2f", "c3k2", "sppf", "c2psa"):
        for conv in ("cv1", "cv2"):
            _conv_bn(importer, f"{path}/{conv}", f"{key}.{conv}")
        for j in range(spec.repeats if spec.kind != "sppf" else 0):
            inner = _c3k if spec.c3k else _psa_block if spec.kind == "c2psa" else _bottleneck
            inner(importer, f"{path}/m_{j}", f"{key}.m.{j}")
    elif spec.kind not in ("upsample", "concat"):
        raise ValueError(f"no import for layer kind {spec.kind!r}")


def _head(importer: Importer, model: YOLOv8 | YOLO11, key: str) -> None:
    """The Detect layer at torch `key` -> `head`."""
    for level in range(len(model.strides)):
        for k in range(2):
            _conv_bn(importer, f"head/box_{level}_{k}", f"{key}.cv2.{level}.{k}")
            if model.depthwise_head:
                for j in range(2):
                    _conv_bn(importer, f"head/cls_{level}_{k}_{j}", f"{key}.cv3.{level}.{k}.{j}")
            else:
                _conv_bn(importer, f"head/cls_{level}_{k}", f"{key}.cv3.{level}.{k}")
        importer.conv(f"params/head/box_{level}_2", f"{key}.cv2.{level}.2", bias=True)
        importer.conv(f"params/head/cls_{level}_2", f"{key}.cv3.{level}.2", bias=True)
    if model.reg_max > 1:
        weight = importer.tensor(f"{key}.dfl.conv.weight")  # (1, reg_max, 1, 1): the bins 0 .. reg_max - 1.
        importer.set(
            "params/head/dfl", None if weight is None else weight.transpose(2, 3, 1, 0), f"{key}.dfl.conv.weight"
        )


@register(YOLOv8)
@register(YOLO11)
def convert_yolo(importer: Importer, model: YOLOv8 | YOLO11) -> None:
    """Maps model.{i}.* to model_{i}/* layer by layer and the Detect layer model.{22 or 23}.* to head/*."""
    specs = model.layer_specs()
    for spec in specs:
        _layer(importer, spec)
    _head(importer, model, f"model.{len(specs)}")
