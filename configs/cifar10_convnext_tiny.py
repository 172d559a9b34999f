"""ConvNeXt-T on CIFAR-10 with a 2x2 patchify stem for 32x32 inputs.

  jaxdl-train --config=configs/cifar10_convnext_tiny.py --workdir=runs/cifar10_convnext

Liu et al. 2022's ConvNeXt-T (depths 3-3-9-3, widths 96-768, layer scale 1e-6,
stochastic depth 0.1). The CIFAR stem patchifies 2x2 instead of 4x4 so the last
stage still sees a 2x2 map. Recipe after the paper's ImageNet-1k training
(AdamW, learning rate 4e-3 for batch 4096 scaled linearly to batch 256, weight
decay 0.05, cosine with warmup, label smoothing 0.1, mixup 0.8, cutmix 1.0),
shortened to 200 epochs for CIFAR.
"""

import ml_collections

from configs import base, vision


def get_config() -> ml_collections.ConfigDict:
    """ConvNeXt-T on CIFAR-10, the paper's regularisation."""
    config = base.get_config()
    vision.cifar10(config)
    config.model.name = "convnext_tiny"
    config.model.kwargs = ml_collections.ConfigDict(dict(cifar_stem=True, image_size=32))
    config.task.label_smoothing = 0.1
    config.augment.mixup_alpha = 0.8
    config.augment.cutmix_alpha = 1.0
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 4e-3 * 256 / 4096
    config.optimizer.weight_decay = 0.05
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 3500  # 20 epochs at 176 steps per epoch.
    config.training.batch_size = 256
    config.training.num_epochs = 200.0
    config.training.eval_every_steps = 1000
    config.training.checkpoint_every_steps = 1000
    config.training.log_every_steps = 100
    return config
