"""U-Net with a ResNet-18 encoder (segmentation_models_pytorch's Unet layout) on `shapes`.

  jaxdl-train --config=configs/shapes_unet_resnet18.py --workdir=runs/shapes_unet_resnet18

The encoder is jaxdl's registered resnet18 returning feature maps at strides
2..32; the decoder has smp's channels (256, 128, 64, 32, 16), nearest
upsampling and two conv-BN-ReLU per block. Trained from scratch here; an
smp.Unet state dict (e.g. ImageNet-initialised elsewhere) loads with
--config.init_from=unet.safetensors.
"""

import ml_collections

from configs import base, shapes


def get_config() -> ml_collections.ConfigDict:
    """unet_resnet18 from scratch, 5 epochs; Adam 1e-3 with a cosine decay."""
    config = base.get_config()
    shapes.shapes(config)
    config.model.name = "unet_resnet18"
    config.model.kwargs = ml_collections.ConfigDict({"image_size": 64})
    config.optimizer.learning_rate = 1e-3
    config.schedule.name = "cosine"
    config.training.batch_size = 32
    config.training.num_epochs = 5.0  # 8x the FLOPs of shapes_unet per image: fewer epochs on a CPU.
    config.training.eval_every_steps = 100
    config.training.log_every_steps = 50
    config.training.checkpoint_every_steps = 100
    return config
