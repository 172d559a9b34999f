"""Logistic regression on scikit-learn's breast-cancer table (binary, one logit).

jaxdl-train --config=configs/breast_cancer_logreg.py --workdir=runs/breast_cancer
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """Standardised features, one sigmoid output, Adam."""
    config = base.get_config()
    config.model.name = "logistic_regression"
    config.task.num_classes = 2
    config.dataset.name = "breast_cancer"
    config.dataset.input_key = "features"
    config.dataset.train_transforms = "standardize()"
    config.dataset.eval_transforms = "standardize()"
    config.optimizer.learning_rate = 1e-2
    config.training.batch_size = 32
    config.training.num_epochs = 30.0
    config.training.eval_every_steps = 50
    config.training.checkpoint_every_steps = 100
    return config
