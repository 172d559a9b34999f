"""EfficientNet-B0 on ImageNet-1k, the recipe of Tan & Le 2019.

  jaxdl-train --config=configs/imagenet_efficientnet_b0.py --workdir=runs/imagenet_efficientnet_b0

"EfficientNet: Rethinking Model Scaling", section 5.2: RMSProp (decay 0.9,
momentum 0.9), batch norm momentum 0.99, weight decay 1e-5, initial learning rate
0.256 decayed by 0.97 every 2.4 epochs, dropout 0.2, stochastic depth 0.2,
350 epochs, batch 4096 as in the released training code, at B0's 224x224
resolution. The paper's AutoAugment is not part of jaxdl. RMSProp's epsilon is
0.001 as in the released code.
"""

import ml_collections

from configs import base, vision

EPOCHS = 350.0


def get_config() -> ml_collections.ConfigDict:
    """EfficientNet-B0, 350 epochs, RMSProp and exponential decay."""
    config = base.get_config()
    vision.imagenet(config, size=224)
    config.model.name = "efficientnet_b0"
    config.model.kwargs = ml_collections.ConfigDict(dict(dropout_rate=0.2, stochastic_depth_rate=0.2))
    config.optimizer.name = "rmsprop"
    config.optimizer.learning_rate = 0.256
    config.optimizer.b2 = 0.9  # RMSProp's decay.
    config.optimizer.momentum = 0.9
    config.optimizer.eps = 1e-3
    config.optimizer.weight_decay = 1e-5
    config.schedule.name = "exponential"
    config.schedule.decay_factor = 0.97
    config.schedule.decay_every = vision.epochs_to_fraction(2.4, EPOCHS)
    config.training.batch_size = 4096
    config.training.num_epochs = EPOCHS
    return config
