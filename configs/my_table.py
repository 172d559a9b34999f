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

from configs import breast_cancer_mlp


def get_config() -> ml_collections.ConfigDict:
    """breast_cancer_mlp.py's model and training (one tanh hidden layer of 16 units, Adam 1e-2) on a CSV table."""
    config = breast_cancer_mlp.get_config()
    config.task.name = "classification"
    config.dataset.name = "csv"
    config.dataset.path = ""  # Required: the CSV file, one row per example, a header row of column names.
    config.dataset.label = ""  # Required: the column to predict.
    config.dataset.target_key = "label"
    return config
