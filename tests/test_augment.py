"""Image augmentation and the train step's loss options: resized crops, mixup, cutmix,
label smoothing, auxiliary losses, frozen params, mixed precision."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from jaxdl import augment, steps, tasks, train
from jaxdl.data import transforms
from jaxdl.state import TrainState
from tests import helpers


def test_resized_crop_matches_torchvision_bilinear():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 29, 3)).astype(np.uint8)
    for box, size in [((3, 5, 20, 17), 24), ((0, 0, 37, 29), 16), ((10, 2, 9, 25), 40)]:
        ours = transforms.resized_crop(image, box, size)
        reference = TF.resized_crop(
            torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1), *box, [size, size], antialias=False
        )
        np.testing.assert_allclose(ours, reference.permute(1, 2, 0).numpy(), rtol=1e-5, atol=1e-3)


def test_random_resized_crop_boxes_respect_scale_and_ratio():
    op = transforms.RandomResizedCrop(size=8, scale=(0.25, 0.5), ratio=(0.5, 2.0))
    uniforms = op.draw(np.random.default_rng(1), 200)
    fitted = 0
    for u in uniforms:
        top, left, h, w = op.box(64, 48, u)
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 48
        area = h * w / (64 * 48)
        if 0.2 < area < 0.55:  # Rounding to whole pixels moves the area a little.
            fitted += 1
            assert 0.4 < w / h < 2.5
    assert fitted == len(uniforms)  # These scales always fit in 10 tries.


def test_resizing_transforms_accept_images_of_different_sizes():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3)).astype(np.uint8) for h, w in [(40, 30), (17, 50), (32, 32)]]
    batch = {"input": images, "target": np.arange(3)}
    [crop] = transforms.build(transforms.parse("random_resized_crop(size=16)"), global_batch=3)
    out = crop.random_map(batch, np.random.default_rng(0))
    assert out["input"].shape == (3, 16, 16, 3)
    center = transforms.CenterCrop(size=32, fraction=1.0).map({"input": [images[2]], "target": np.arange(1)})
    np.testing.assert_allclose(center["input"][0], images[2])  # Same size, whole image: identity.


def test_mixup_is_a_convex_combination_with_the_reversed_batch():
    x = jax.random.normal(jax.random.key(0), (6, 4, 4, 3))
    y = jax.nn.one_hot(jnp.arange(6) % 3, 3)
    mixed, soft, lam = augment.mix(jax.random.key(1), x, y, augment.MixConfig(mixup_alpha=0.4))
    assert 0 < float(lam) < 1
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(soft, lam * y + (1 - lam) * y[::-1], rtol=1e-6)
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)


def test_cutmix_label_weight_equals_the_pasted_area():
    x = jnp.zeros((4, 16, 12, 1)).at[:].set(jnp.arange(4.0)[:, None, None, None])
    y = jax.nn.one_hot(jnp.arange(4), 4)
    for seed in range(5):
        mixed, soft, lam = augment.mix(jax.random.key(seed), x, y, augment.MixConfig(cutmix_alpha=1.0))
        pasted = float(jnp.mean(mixed[0] != x[0]))  # Example 0 takes its box from example 3.
        np.testing.assert_allclose(1 - float(lam), pasted, atol=1e-6)
        np.testing.assert_allclose(soft[0, 3], pasted, atol=1e-6)


def test_label_smoothing_matches_torch_cross_entropy():
    task = tasks.Classification(num_classes=5)
    logits = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0, 2])
    ours = task.soft_loss(jnp.asarray(logits), task.soft_targets(jnp.asarray(labels), 0.1))
    reference = F.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=0.1, reduction="none"
    )
    np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-5)


class _WithAux(nn.Module):
    """A model that, like GoogLeNet, also returns auxiliary logits in training."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        main = nn.Dense(3, name="main")(x)
        return (main, nn.Dense(3, name="aux")(x)) if train else main


def test_auxiliary_outputs_add_weighted_losses():
    model = _WithAux()
    x = jax.random.normal(jax.random.key(0), (4, 5))
    y = jnp.array([0, 1, 2, 1])
    variables = model.init(jax.random.key(1), x, train=True)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], batch_stats={}, tx=optax.sgd(0.0))
    task = tasks.Classification(num_classes=3)
    step = train.make_train_step(task, train.StepOptions(aux_loss_weight=0.3))
    _, metrics = step(state, {"input": x, "target": y}, jax.random.key(2))
    main, aux = model.apply(variables, x, train=True)
    expected = jnp.mean(task.loss(main, y) + 0.3 * task.loss(aux, y))
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], jnp.mean(jnp.argmax(main, -1) == y))


@pytest.mark.slow
def test_mixup_training_is_the_same_on_one_and_eight_devices(tmp_path):
    options = dict(augment__mixup_alpha=0.4, augment__cutmix_alpha=1.0, task__label_smoothing=0.1)
    one = train.train_and_evaluate(helpers.tiny_cnn(**options), tmp_path / "one")
    eight = train.train_and_evaluate(helpers.tiny_cnn(parallel__num_devices=8, **options), tmp_path / "eight")
    plain = train.train_and_evaluate(helpers.tiny_cnn(), tmp_path / "plain")
    helpers.assert_trees_close(helpers.saved_params(tmp_path / "one")[0], helpers.saved_params(tmp_path / "eight")[0])
    np.testing.assert_allclose(one["test"]["loss"], eight["test"]["loss"], rtol=1e-4)
    assert one["test"]["loss"] != plain["test"]["loss"]


def _initial_params(cfg):
    """The params a run of `cfg` starts from (the trainer's init key)."""
    init_rng = jax.random.split(jax.random.key(cfg.seed))[0]
    return jax.jit(train.Experiment(cfg).init_fn())(init_rng).params


def test_frozen_params_do_not_change(tmp_path):
    cfg = helpers.tiny_cnn(transfer__freeze="^(conv_0|bn_0)/")
    train.train_and_evaluate(cfg, tmp_path)
    params, _ = helpers.saved_params(tmp_path)
    initial = _initial_params(cfg)
    np.testing.assert_array_equal(params["conv_0"]["kernel"], initial["conv_0"]["kernel"])
    np.testing.assert_array_equal(params["bn_0"]["scale"], initial["bn_0"]["scale"])
    assert not np.allclose(params["conv_1"]["kernel"], initial["conv_1"]["kernel"])


def test_frozen_layers_keep_their_batch_statistics():
    stats = {"bn_0": {"mean": jnp.zeros(2)}, "bn_1": {"mean": jnp.zeros(2)}}
    updated = {"bn_0": {"mean": jnp.ones(2)}, "bn_1": {"mean": jnp.ones(2)}}
    kept = steps._keep_frozen_stats(re.compile("^bn_0/"), stats, updated)
    np.testing.assert_array_equal(kept["bn_0"]["mean"], 0.0)
    np.testing.assert_array_equal(kept["bn_1"]["mean"], 1.0)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params(tmp_path):
    results = train.train_and_evaluate(helpers.tiny_cnn(dtype="bfloat16"), tmp_path)
    params, _ = helpers.saved_params(tmp_path)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype("float32")}
    assert np.isfinite(results["test"]["loss"])
    cfg = helpers.tiny_cnn(dtype="bfloat16")
    model = train.Experiment(cfg).model
    out = model.apply(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))), jnp.zeros((2, 8, 8, 1)), train=False)
    assert out.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "override, message",
    [
        ({"dtype": "float16"}, "config.dtype='float16' is not valid"),
        ({"augment__mixup_alpha": -1.0}, "config.augment.mixup_alpha=-1.0"),
        ({"transfer__freeze": "("}, "config.transfer.freeze='(' is not a valid regex"),
        ({"init_from": "/nonexistent.safetensors"}, "config.init_from='/nonexistent.safetensors' is not a file"),
        ({"task__label_smoothing": 1.0}, "config.task.label_smoothing=1.0"),
    ],
)
def test_bad_training_options_are_one_line_errors(override, message):
    from jaxdl.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        train.Experiment(helpers.tiny_cnn(**override))
