"""The CIFAR-10 and ImageNet experiment configs run one step under tfds' mock data (tiny variants)."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdl import experiment, models, tasks, train
from tests import helpers

pytestmark = pytest.mark.slow  # End-to-end runs; `-m "not slow"` leaves them out.

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
    # DeiT's 3 copies do not divide a batch of 4; 2 still runs repeated augmentation.
    cfg.dataset.repeated_augmentations = min(cfg.dataset.repeated_augmentations, 2)
    cfg.training.num_steps = 1
    cfg.parallel.num_devices = 1
    return cfg, full


@pytest.mark.parametrize("name", sorted(TINY))
def test_config_trains_one_step_on_mock_data(name, tmp_path):
    cfg, full = _one_step(name)
    helpers.build_without_data(helpers.config(name))  # The full-size config builds too.
    assert full in models.list_models()
    with tfds.testing.mock_data(num_examples=8):
        results = train.train_and_evaluate(cfg, tmp_path)
    assert results["final_step"] == 1
    assert np.isfinite(results["test"]["loss"])


def test_transfer_learning_loads_backbone_replaces_head_and_freezes(tmp_path):
    """The course's "pre-trained base + new dense head": load torchvision weights, train only the head."""
    import jax
    import torch
    from safetensors.numpy import save_file
    from torchvision.models.resnet import BasicBlock, ResNet

    from jaxdl import convert

    torch.manual_seed(0)
    backbone = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1000)  # An "ImageNet" head of 1000 classes.
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.numpy() for k, v in backbone.state_dict().items()}, str(path))
    cfg, _ = _one_step("cifar10_resnet18")
    cfg.model.kwargs.width = 64  # torchvision's stem width.
    cfg.model.kwargs.cifar_stem = False  # torchvision's 7x7 stem, so its conv1 loads.
    cfg.init_from = str(path)
    cfg.transfer.freeze = "^(?!head/)"  # Everything but the new head.
    cfg.training.num_steps = 2
    init_rng = jax.random.split(jax.random.key(cfg.seed))[0]  # The trainer's init key.
    with tfds.testing.mock_data(num_examples=8):
        initial_head = jax.jit(train.Experiment(cfg).init_fn())(init_rng).params["head"]["kernel"]
        train.train_and_evaluate(cfg, tmp_path / "run")
    params, _ = helpers.saved_params(tmp_path / "run")
    model = experiment.build_model(cfg, tasks.build_task(cfg))
    expected = convert.from_torch(model, str(path), input_shape=(1, 32, 32, 3), skip_mismatched=True)["params"]
    assert "head" not in expected  # 1000 classes do not fit 10: the head keeps its fresh init ...
    np.testing.assert_array_equal(params["conv1"]["kernel"], expected["conv1"]["kernel"])
    np.testing.assert_array_equal(params["layer4_0"]["conv2"]["kernel"], expected["layer4_0"]["conv2"]["kernel"])
    assert not np.allclose(params["head"]["kernel"], initial_head)  # ... and is the only part that trained.


@pytest.mark.parametrize("tiny", ["googlenet_tiny", "densenet_tiny"])
def test_families_without_a_shipped_config_train_through_the_loop(tiny, tmp_path):
    """GoogLeNet's auxiliary losses and DenseNet's concatenations through the real loop, one step."""
    cfg, _ = _one_step("cifar10_resnet18")
    cfg.model.name = tiny
    cfg.model.kwargs = ml_collections.ConfigDict(dict(cifar_stem=True, image_size=32))
    with tfds.testing.mock_data(num_examples=8):
        results = train.train_and_evaluate(cfg, tmp_path)
    assert results["final_step"] == 1 and np.isfinite(results["test"]["loss"])
    params, _ = helpers.saved_params(tmp_path)
    assert ("aux1" in params) == (tiny == "googlenet_tiny")  # Aux heads exist (and trained) for GoogLeNet.
