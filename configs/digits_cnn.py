"""The default experiment: a small CNN on scikit-learn's 8x8 digits.

  jaxdl-train --config=configs/digits_cnn.py --workdir=runs/digits

Reaches >= 97% test accuracy in well under a minute on a 2-core CPU.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """Small CNN, Adam with cosine decay, light augmentation."""
    config = base.get_config()
    config.model.name = "cnn"
    config.model.kwargs = ml_collections.ConfigDict(dict(features=(32, 64), dense_features=128, dropout_rate=0.25))
    config.dataset.name = "digits"
    config.dataset.train_transforms = "rescale(scale=0.0625)|random_crop(padding=1)"
    config.dataset.eval_transforms = "rescale(scale=0.0625)"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 20
    config.training.batch_size = 64
    config.training.num_epochs = 30.0
    config.training.eval_every_steps = 100
    config.training.checkpoint_every_steps = 100
    return config
