"""ResNet-18 with the CIFAR stem on CIFAR-10.

  jaxdl-train --config=configs/cifar10_resnet18.py --workdir=runs/cifar10_resnet18

Recipe of He et al. 2016 ("Deep Residual Learning", section 4.2, CIFAR-10):
SGD momentum 0.9, batch 128, learning rate 0.1 divided by 10 at 32k and 48k
iterations, weight decay 1e-4, 64k iterations (about 182 epochs of 45k images),
pad-4 random crops and flips. The CIFAR stem is a 3x3 stride-1 conv without the
max-pool, so 32x32 inputs keep a 4x4 map before the global pool.
"""

import ml_collections

from configs import base, vision


def get_config() -> ml_collections.ConfigDict:
    """ResNet-18 on CIFAR-10, He et al.'s CIFAR schedule."""
    config = base.get_config()
    vision.cifar10(config)
    config.model.name = "resnet18"
    config.model.kwargs = ml_collections.ConfigDict(dict(cifar_stem=True, image_size=32))
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 1e-4
    config.schedule.name = "step"
    config.schedule.decay_boundaries = (0.5, 0.75)  # 32k and 48k of 64k iterations.
    config.training.batch_size = 128
    config.training.num_steps = 64_000
    config.training.eval_every_steps = 2000
    config.training.checkpoint_every_steps = 2000
    config.training.log_every_steps = 100
    return config
