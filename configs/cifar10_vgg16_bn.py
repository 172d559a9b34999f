"""VGG-16 with BatchNorm on CIFAR-10.

  jaxdl-train --config=configs/cifar10_vgg16_bn.py --workdir=runs/cifar10_vgg16_bn

Simonyan & Zisserman's configuration D with BatchNorm after every conv; for 32x32
inputs the CIFAR stem keeps the conv stack and replaces the 7x7x512 -> 4096 -> 4096
classifier by one on the 1x1x512 features. Recipe: SGD momentum 0.9, batch 128,
learning rate 0.1 with cosine decay over 200 epochs, weight decay 5e-4, pad-4
crops and flips (the usual CIFAR recipe for VGG-BN; the paper trained on ImageNet
only, with batch 256, lr 0.01 and weight decay 5e-4).
"""

import ml_collections

from configs import base, vision


def get_config() -> ml_collections.ConfigDict:
    """VGG-16-BN on CIFAR-10, cosine schedule."""
    config = base.get_config()
    vision.cifar10(config)
    config.model.name = "vgg16_bn"
    config.model.kwargs = ml_collections.ConfigDict(dict(cifar_stem=True, image_size=32))
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    config.training.batch_size = 128
    config.training.num_epochs = 200.0
    config.training.eval_every_steps = 2000
    config.training.checkpoint_every_steps = 2000
    config.training.log_every_steps = 100
    return config
