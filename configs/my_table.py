"""Your own CSV table: the course's tanh MLP (or logistic regression) predicting one column from the others.

  jaxdl-train --config=configs/my_table.py --workdir=runs/my_table \
      --config.dataset.path=patients.csv --config.dataset.label=outcome

Every column but `label` is a feature and must be numeric. The classes are the
label column's distinct values (numbers or text), sorted; set
`--config.task.num_classes` to their count if it is not 2 (the run says so).
Rows are split 70/15/15 with a fixed seed, and the features standardised with
the train rows' mean and std (jaxdl/data/tables.py).

Variants: `--config.model.name=logistic_regression` (the course's logistic
regression; drop model.kwargs with `--config.model.kwargs={}`); a regression on
a numeric column: `--config.task.name=regression --config.dataset.target_key=target`.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """One tanh hidden layer of 16 units on the standardised numeric columns; Adam 1e-2."""
    config = base.get_config()
    config.model.name = "mlp"
    config.model.kwargs = ml_collections.ConfigDict(dict(hidden_sizes=(16,), activation="tanh", dropout_rate=0.1))
    config.task.name = "classification"
    config.task.num_classes = 2
    config.dataset.name = "csv"
    config.dataset.path = ""  # Required: the CSV file, one row per example, a header row of column names.
    config.dataset.label = ""  # Required: the column to predict.
    config.dataset.input_key = "features"
    config.dataset.target_key = "label"
    config.dataset.train_transforms = "standardize()"
    config.dataset.eval_transforms = "standardize()"
    config.optimizer.learning_rate = 1e-2
    config.training.batch_size = 32
    config.training.num_epochs = 30.0
    config.training.eval_every_steps = 50
    config.training.checkpoint_every_steps = 100
    return config
