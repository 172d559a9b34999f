"""The CNN on tfds `mnist` (prepare it first: `tfds build mnist --file_format=array_record`).

  jaxdl-train --config=configs/mnist_cnn.py --workdir=runs/mnist

Validation is the last 10% of tfds' train split.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """Two conv blocks with BatchNorm, momentum SGD, step decay."""
    config = base.get_config()
    config.model.name = "cnn"
    config.model.kwargs = ml_collections.ConfigDict(
        dict(features=(32, 64), dense_features=256, dropout_rate=0.25, use_batch_norm=True)
    )
    config.dataset.name = "mnist"
    config.dataset.train_split = "train[:90%]"
    config.dataset.val_split = "train[90%:]"
    config.dataset.test_split = "test"
    config.dataset.cache_in_memory = False
    config.dataset.train_transforms = "rescale(scale=0.00392156862745098)|random_crop(padding=2)"
    config.dataset.eval_transforms = "rescale(scale=0.00392156862745098)"
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.05
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "step"
    config.schedule.warmup_steps = 100
    config.training.batch_size = 128
    config.training.num_epochs = 5.0
    config.training.eval_every_steps = 500
    config.training.checkpoint_every_steps = 500
    return config
