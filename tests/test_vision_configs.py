"""The CIFAR-10 and ImageNet experiment configs run one step under tfds' mock data (tiny variants)."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdl import configuration, models, train
from tests import helpers

# Shipped config -> the tiny variant of its family that the test trains instead.
TINY = {
    "cifar10_resnet18": "resnet_tiny",
    "cifar10_vgg16_bn": "vgg_tiny",
    "cifar10_vit_s_16": "vit_mini",
    "cifar10_convnext_tiny": "convnext_mini",
    "imagenet_resnet50": "resnet_tiny",
    "imagenet_vit_b_16": "vit_mini",
    "imagenet_convnext_tiny": "convnext_mini",
    "imagenet_efficientnet_b0": "efficientnet_tiny",
}


def _one_step(name: str) -> ml_collections.ConfigDict:
    cfg = helpers.config(name)
    full = cfg.model.name
    cfg.model.name = TINY[name]
    if name.startswith("imagenet"):  # Crops of 32 instead of 224 keep the compile small.
        for key in ("train_transforms", "eval_transforms"):
            cfg.dataset[key] = cfg.dataset[key].replace("size=224", "size=32")
        cfg.model.kwargs.image_size = 32
        cfg.dataset.worker_count = 0
    cfg.training.batch_size = 4
    cfg.training.num_steps = 1
    cfg.parallel.num_devices = 1
    return cfg, full


@pytest.mark.parametrize("name", sorted(TINY))
def test_config_trains_one_step_on_mock_data(name, tmp_path):
    cfg, full = _one_step(name)
    configuration.validate(helpers.config(name), num_devices=1)  # The full-size config is valid too.
    assert full in models.list_models()
    with tfds.testing.mock_data(num_examples=8):
        results = train.train_and_evaluate(cfg, tmp_path)
    assert results["final_step"] == 1
    assert np.isfinite(results["test"]["loss"])
