"""ResNet-50 on ImageNet-1k, the recipe of He et al. 2016.

  jaxdl-train --config=configs/imagenet_resnet50.py --workdir=runs/imagenet_resnet50

"Deep Residual Learning for Image Recognition", section 3.4: SGD momentum 0.9,
batch 256, learning rate 0.1 divided by 10 when the error plateaus (at epochs 30
and 60 in the common 90-epoch schedule), weight decay 1e-4, random-resized 224
crops and flips (the paper used scale augmentation; random-resized crops are
torchvision's reference recipe for these weights). No dropout.
"""

import ml_collections

from configs import base, vision


def get_config() -> ml_collections.ConfigDict:
    """ResNet-50, 90 epochs, step decay at 1/3 and 2/3."""
    config = base.get_config()
    vision.imagenet(config)
    config.model.name = "resnet50"
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 1e-4
    config.schedule.name = "step"
    config.schedule.decay_boundaries = (1 / 3, 2 / 3)  # Epochs 30 and 60 of 90.
    config.schedule.decay_factor = 0.1
    config.training.batch_size = 256
    config.training.num_epochs = 90.0
    return config
