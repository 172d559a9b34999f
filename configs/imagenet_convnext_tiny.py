"""ConvNeXt-T on ImageNet-1k, the recipe of Liu et al. 2022.

  jaxdl-train --config=configs/imagenet_convnext_tiny.py --workdir=runs/imagenet_convnext_tiny

"A ConvNet for the 2020s", Appendix A.1 (ImageNet-1k training): AdamW, batch
4096, learning rate 4e-3, 20 warmup epochs then cosine decay, weight decay 0.05,
300 epochs, label smoothing 0.1, mixup 0.8, cutmix 1.0, stochastic depth 0.1,
layer scale 1e-6. The paper's RandAugment, random erasing and EMA are not part of
jaxdl.
"""

import ml_collections

from configs import base, vision


def get_config() -> ml_collections.ConfigDict:
    """ConvNeXt-T, 300 epochs, batch 4096."""
    config = base.get_config()
    vision.imagenet(config)
    config.model.name = "convnext_tiny"
    config.task.label_smoothing = 0.1
    config.augment.mixup_alpha = 0.8
    config.augment.cutmix_alpha = 1.0
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 4e-3
    config.optimizer.weight_decay = 0.05
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 6_200  # 20 epochs of 1.27M images at batch 4096.
    config.training.batch_size = 4096
    config.training.num_epochs = 300.0
    return config
