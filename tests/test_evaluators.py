"""Evaluator maths on fixed inputs: confusion matrices, IoU with absent classes, pixel weighting, host evaluators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from jaxdl import parallel, steps, tasks
from jaxdl.errors import ConfigError
from tests import helpers


class _Identity:
    """A stand-in state whose model returns its input: the batch's "input" holds the outputs."""

    step = 0

    def apply_fn(self, variables, x, train):
        return x

    def variables(self):
        return {}

    def eval_variables(self):
        return {}


def _logits(predicted: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[predicted] * 5.0


def _evaluate(task, batches):
    """Chains the eval step over `batches` as evaluate does, on one device."""
    step, totals = steps.make_eval_step(task), None
    for batch in batches:
        totals = step(_Identity(), batch, totals)
    return task.finalize_sums(jax.device_get(totals))


def test_confusion_matrix_and_pixel_accuracy_match_sklearn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(3, 6, 5))
    truth[0, :2] = 255  # Unlabelled pixels.
    predicted = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, size=truth.shape)) % 4
    task = tasks.Segmentation(num_classes=4)
    batch = {"input": _logits(predicted, 4), "target": truth, "mask": np.ones(3, np.float32)}
    sums = steps.make_eval_step(task)(_Identity(), batch)
    labelled = truth != 255
    expected = skm.confusion_matrix(truth[labelled], predicted[labelled], labels=range(4))
    np.testing.assert_array_equal(np.asarray(sums["confusion"]), expected)
    metrics = task.finalize_sums(jax.device_get(sums))
    assert metrics["pixel_accuracy"] == pytest.approx(skm.accuracy_score(truth[labelled], predicted[labelled]))
    ious = skm.jaccard_score(truth[labelled], predicted[labelled], labels=range(4), average=None)
    np.testing.assert_allclose([metrics[f"iou_{k}"] for k in range(4)], ious, rtol=1e-6)
    assert metrics["miou"] == pytest.approx(ious.mean())
    dice = skm.f1_score(truth[labelled], predicted[labelled], labels=range(4), average=None)  # Dice = F1.
    assert metrics["dice"] == pytest.approx(dice.mean())


def test_iou_leaves_out_classes_absent_from_truth_and_predictions():
    confusion = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # Class 2 occurs nowhere.
    metrics = tasks.segmentation.confusion_metrics(confusion)
    assert "iou_2" not in metrics
    assert metrics["iou_0"] == pytest.approx(3 / 4) and metrics["iou_1"] == pytest.approx(2 / 3)
    assert metrics["miou"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    # A class predicted but never true is defined (IoU 0) and lowers the mean.
    metrics = tasks.segmentation.confusion_metrics(np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]]))
    assert metrics["iou_2"] == 0.0 and metrics["miou"] == pytest.approx((3 / 4 + 1 + 0) / 3)


def test_pixel_accuracy_is_weighted_by_pixels_not_images_and_padding_never_counts():
    task = tasks.Segmentation(num_classes=2)
    truth = np.full((3, 4, 4), 255)
    truth[0, :1] = 1  # 4 labelled pixels, all predicted right.
    truth[1, :3] = 0  # 12 labelled pixels, 6 right.
    predicted = np.ones((3, 4, 4), np.int64)
    predicted[1, :3, :2] = 0
    truth[2] = 0  # A padding row: wrong everywhere, masked out.
    batch = {"input": _logits(predicted, 2), "target": truth, "mask": np.array([1.0, 1.0, 0.0], np.float32)}
    metrics = _evaluate(task, [batch])
    assert metrics["pixel_accuracy"] == pytest.approx(10 / 16)  # Not (1 + 0.5) / 2.
    # Split over two batches, the totals are the same.
    halves = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(3)]
    assert _evaluate(task, halves)["pixel_accuracy"] == pytest.approx(10 / 16)


def test_loss_matches_torch_cross_entropy_with_weights_and_ignore_index():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    truth = rng.integers(0, 3, size=(2, 5, 4))
    truth[1, 0] = 255
    weights = (1.0, 2.0, 0.5)
    task = tasks.Segmentation(num_classes=3, class_weights=weights)
    ours = np.asarray(task.loss(jnp.asarray(logits), jnp.asarray(truth)))
    reference = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights), ignore_index=255)
    for b in range(2):
        expected = reference(
            torch.from_numpy(logits[b : b + 1]).permute(0, 3, 1, 2), torch.from_numpy(truth[b : b + 1])
        )
        assert ours[b] == pytest.approx(float(expected), rel=1e-5)


def test_dice_term_is_one_minus_soft_dice():
    task = tasks.Segmentation(num_classes=2, dice_weight=1.0)
    plain = tasks.Segmentation(num_classes=2)
    truth = np.zeros((1, 2, 2), np.int64)
    truth[0, 0] = 1
    logits = _logits(truth, 2) * 100  # Certain and right: soft Dice 1, so no extra loss.
    np.testing.assert_allclose(task.loss(jnp.asarray(logits), truth), plain.loss(jnp.asarray(logits), truth), atol=1e-6)
    uniform = np.zeros((1, 2, 2, 2), np.float32)  # p = 0.5 everywhere: Dice of each class = 2*1/(2+2) = 0.5.
    assert float(task.soft_dice(jnp.asarray(uniform), truth)[0]) == pytest.approx(0.5)


def test_segmentation_needs_masks_and_picks_the_best_checkpoint_by_miou():
    from jaxdl import experiment

    with pytest.raises(ConfigError, match="set config.dataset.target_kind='mask'"):
        tasks.build_task(helpers.config("digits_cnn", task__name="segmentation"))
    segmentation = {"task__name": "segmentation", "dataset__target_kind": "mask", "task__num_classes": 4}
    cfg = helpers.config("digits_cnn", **segmentation)
    task = tasks.build_task(cfg)
    assert experiment.best_metric(cfg, task) == "val/miou" and task.is_better("val/miou", 0.8, 0.7)
    with pytest.raises(ConfigError, match="ignore_index=2 is a class id"):
        tasks.build_task(helpers.config("digits_cnn", dataset__ignore_index=2, **segmentation))


class _MedianError(tasks.Regression):
    """A toy host-side evaluator: the median absolute error needs every prediction at once."""

    host_evaluator = True

    def host_values(self, outputs, batch):
        return {"error": jnp.abs(outputs[:, 0] - batch["target"])}

    def host_metrics(self, values):
        return {"median_error": float(np.median(values["error"]))}


@pytest.mark.parametrize("strategy", ["jit", "pmap"])
def test_host_evaluator_sees_every_real_example_once_on_8_devices(strategy):
    mesh = parallel.make_mesh(8)
    run = parallel.make_strategy(strategy, mesh)
    task = _MedianError()
    errors = np.arange(21, dtype=np.float32) ** 2  # 21 examples: the last batch of 8 is padded.
    batches = []
    for first in range(0, 21, 8):
        real = errors[first : first + 8]
        pad = 8 - len(real)
        batches.append(
            {
                "input": np.concatenate([real, np.full(pad, 1e6, np.float32)])[:, None],
                "target": np.zeros(8, np.float32),
                "mask": np.concatenate([np.ones(len(real)), np.zeros(pad)]).astype(np.float32),
            }
        )
    state = run.put_state(_StateTree())
    metrics = steps.evaluate(run.compile_eval(steps.make_eval_step(task)), state, batches, run, task)
    assert metrics["median_error"] == float(np.median(errors))
    assert metrics["mae"] == pytest.approx(float(errors.mean()))


@jax.tree_util.register_pytree_node_class
class _StateTree(_Identity):
    """The identity state as a pytree (no leaves), so strategies can place and compile it."""

    def tree_flatten(self):
        return (), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls()
