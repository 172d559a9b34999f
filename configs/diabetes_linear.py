"""Linear regression (MSE) on scikit-learn's diabetes table: the regression task.

jaxdl-train --config=configs/diabetes_linear.py --workdir=runs/diabetes
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """A single dense layer trained on MSE; metrics MSE, MAE, RMSE."""
    config = base.get_config()
    config.model.name = "logistic_regression"  # One dense layer: linear regression here.
    config.task.name = "regression"
    config.task.num_targets = 1
    config.dataset.name = "diabetes"
    config.dataset.input_key = "features"
    config.dataset.target_key = "target"
    config.dataset.train_transforms = "standardize()"
    config.dataset.eval_transforms = "standardize()"
    config.optimizer.learning_rate = 5e-2
    config.training.batch_size = 32
    config.training.num_epochs = 100.0
    config.training.eval_every_steps = 100
    config.training.checkpoint_every_steps = 200
    return config
