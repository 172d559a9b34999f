"""The course's tanh MLP on scikit-learn's breast-cancer table.

jaxdl-train --config=configs/breast_cancer_mlp.py --workdir=runs/breast_cancer_mlp
"""

import ml_collections

from configs import breast_cancer_logreg


def get_config() -> ml_collections.ConfigDict:
    """One tanh hidden layer of 16 units on the standardised features."""
    config = breast_cancer_logreg.get_config()
    config.model.name = "mlp"
    config.model.kwargs = ml_collections.ConfigDict(dict(hidden_sizes=(16,), activation="tanh", dropout_rate=0.1))
    return config
