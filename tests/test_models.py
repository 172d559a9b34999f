"""Tests for the model registry and the LogisticRegression, MLP, CNN models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.signal import correlate2d

from jaxdl.models import count_params, create_model, layers, list_models, model_accepts
from jaxdl.models.cnn import CNN
from jaxdl.models.linear import LogisticRegression
from jaxdl.models.mlp import MLP

KEY = jax.random.key(0)


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


def test_list_models_sorted() -> None:
    """list_models returns the registered names, sorted, torchvision's names among them."""
    names = list_models()
    assert names == sorted(names)
    assert {"cnn", "logistic_regression", "mlp", "lstm", "gru", "rnn"} <= set(names)
    for family, variants in {
        "vgg": ["11", "11_bn", "13", "13_bn", "16", "16_bn", "19", "19_bn"],
        "resnet": ["18", "34", "50", "101", "152"],
        "plain": ["18", "34"],
        "densenet": ["121", "169", "201"],
        "efficientnet_b": [str(i) for i in range(8)],
        "vit_": ["b_16", "b_32", "l_16", "ti_16", "s_16"],
        "convnext_": ["tiny", "small", "base", "large"],
    }.items():
        assert {family + v for v in variants} <= set(names), family
    assert "googlenet" in names


def test_create_model_types() -> None:
    """create_model builds the class registered under each name."""
    assert isinstance(create_model("cnn", num_outputs=3), CNN)
    assert isinstance(create_model("mlp", num_outputs=3), MLP)
    model = create_model("logistic_regression", num_outputs=3)
    assert isinstance(model, LogisticRegression)
    assert model.num_outputs == 3


def test_unknown_model_message() -> None:
    """An unknown model name gives a one-line error listing choices."""
    with pytest.raises(ValueError) as info:
        create_model("foo", num_outputs=2)
    assert str(info.value) == f"unknown model 'foo'; choose one of: {', '.join(list_models())}"
    assert "\n" not in str(info.value)


def test_unknown_kwarg_names_kwarg_and_fields() -> None:
    """An unknown kwarg is named in the error with the valid fields."""
    with pytest.raises((TypeError, ValueError)) as info:
        create_model("mlp", num_outputs=2, hiden_sizes=(4,))
    msg = str(info.value)
    assert "hiden_sizes" in msg
    for field in ("num_outputs", "hidden_sizes", "activation", "dropout_rate"):
        assert field in msg


def test_axis_name_is_not_a_model_field() -> None:
    """The BatchNorm axis is a trace-time context (layers.batch_norm_axis), not a hyperparameter."""
    for name in list_models():
        assert not model_accepts(name, "axis_name")
    for name in ("cnn", "mlp"):
        with pytest.raises(TypeError, match="'axis_name'"):
            create_model(name, num_outputs=2, axis_name="batch")


def test_unknown_activation() -> None:
    """An unknown MLP activation fails at construction with choices."""
    with pytest.raises(ValueError, match="gelu, relu, sigmoid, tanh"):
        MLP(num_outputs=2, activation="swish")


# --------------------------------------------------------------------------
# Course worked examples
# --------------------------------------------------------------------------


def test_logistic_regression_worked_example() -> None:
    """Course example: logit 4.71 and probability 0.9911."""
    model = create_model("logistic_regression", num_outputs=1)
    x = jnp.array([[12.0, 0.0, 37.0, 1.0]])  # Age, Gender, Temp, Cough
    variables = model.init(KEY, x, train=False)
    assert variables["params"]["dense"]["kernel"].shape == (4, 1)
    variables = {
        "params": {
            "dense": {
                "kernel": jnp.array([[-0.3], [0.2], [0.2], [0.9]]),
                "bias": jnp.array([0.01]),
            }
        }
    }
    logit = model.apply(variables, x, train=False)
    assert logit.shape == (1, 1)
    np.testing.assert_allclose(logit[0, 0], 4.71, atol=1e-5)
    prob = float(jax.nn.sigmoid(logit[0, 0]))
    assert round(prob, 4) == 0.9911


def _backprop_params() -> dict:
    """Return the worked example's weights in Flax's params layout."""
    # Flax Dense kernels are [in, out]: kernel[i, j] links input i to unit j.
    return {
        "hidden_0": {
            "kernel": jnp.array([[0.15, 0.25], [0.20, 0.30]]),
            "bias": jnp.array([0.35, 0.35]),
        },
        "head": {
            "kernel": jnp.array([[0.40, 0.50], [0.45, 0.55]]),
            "bias": jnp.array([0.60, 0.60]),
        },
    }


def test_backprop_worked_example() -> None:
    """Course 2-2-2 sigmoid network: loss, gradient and SGD step."""
    model = MLP(num_outputs=2, hidden_sizes=(2,), activation="sigmoid")
    x = jnp.array([[0.05, 0.10]])
    target = jnp.array([[0.01, 0.99]])
    init_params = model.init(KEY, x, train=False)["params"]
    params = _backprop_params()
    shapes = jax.tree_util.tree_map(jnp.shape, init_params)
    assert shapes == jax.tree_util.tree_map(jnp.shape, params)

    def loss_fn(p: dict) -> jax.Array:
        out = jax.nn.sigmoid(model.apply({"params": p}, x, train=False))
        return jnp.sum(0.5 * (target - out) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    np.testing.assert_allclose(loss, 0.298371109, atol=1e-6)
    np.testing.assert_allclose(grads["head"]["kernel"][0, 0], 0.082167041, atol=1e-6)

    opt = optax.sgd(0.5)
    updates, _ = opt.update(grads, opt.init(params), params)
    new_params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(
        new_params["head"]["kernel"],
        # w5, w7 / w6, w8 from the worked example.
        [[0.35891648, 0.51130127], [0.408666186, 0.561370121]],
        atol=1e-6,
    )
    # Hidden weights use the old output weights, which jax.grad does too.
    np.testing.assert_allclose(
        new_params["hidden_0"]["kernel"],
        [[0.149780716, 0.24975114], [0.19956143, 0.29950229]],
        atol=1e-6,
    )


# --------------------------------------------------------------------------
# Shapes and call conventions
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape",
    [
        ("cnn", (2, 8, 8, 1)),
        ("cnn", (2, 28, 28, 1)),
        ("mlp", (2, 30)),
        ("logistic_regression", (2, 30)),
        ("mlp", (2, 4, 4, 1)),
    ],
)
def test_output_shapes_and_conventions(name: str, shape: tuple) -> None:
    """Every model follows the init/apply convention of the loop."""
    model = create_model(name, num_outputs=5)
    x = jax.random.normal(KEY, shape)
    variables = model.init(KEY, x, train=False)
    logits = model.apply(variables, x, train=False)
    assert logits.shape == (2, 5)
    assert logits.dtype == jnp.float32
    logits, updates = model.apply(
        variables,
        x,
        train=True,
        rngs={"dropout": jax.random.key(1)},
        mutable=["batch_stats"],
    )
    assert logits.shape == (2, 5)
    assert dict(updates) == {}


@pytest.mark.parametrize(
    "name, shape",
    [("mlp", (4, 6)), ("cnn", (4, 8, 8, 1))],
)
def test_dropout_only_in_train_mode(name: str, shape: tuple) -> None:
    """Dropout is random in train mode and inactive in eval mode."""
    model = create_model(name, num_outputs=3, dropout_rate=0.5)
    x = jax.random.normal(KEY, shape)
    variables = model.init(KEY, x, train=False)
    eval_a = model.apply(variables, x, train=False)
    eval_b = model.apply(variables, x, train=False, rngs={"dropout": jax.random.key(7)})
    np.testing.assert_array_equal(eval_a, eval_b)

    def train_out(seed: int) -> jax.Array:
        out, _ = model.apply(
            variables,
            x,
            train=True,
            rngs={"dropout": jax.random.key(seed)},
            mutable=["batch_stats"],
        )
        return out

    assert not np.allclose(train_out(1), train_out(2))
    assert not np.allclose(train_out(1), eval_a)
    np.testing.assert_array_equal(train_out(3), train_out(3))


def test_mlp_without_dropout_is_deterministic_in_train() -> None:
    """A dropout-free MLP matches a hand-written tanh network."""
    model = MLP(num_outputs=2, hidden_sizes=(4, 3))
    x = jax.random.normal(KEY, (3, 5))
    variables = model.init(KEY, x, train=False)
    assert set(variables["params"]) == {"hidden_0", "hidden_1", "head"}
    # No dropout rng is needed when dropout_rate is zero.
    train_logits = model.apply(variables, x, train=True)
    np.testing.assert_allclose(train_logits, model.apply(variables, x, train=False))
    # Independent reference: tanh hidden units, linear head.
    p = variables["params"]
    h = jnp.tanh(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])
    h = jnp.tanh(h @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"])
    ref = h @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(train_logits, ref, rtol=1e-5, atol=1e-6)


def test_cnn_batch_norm_stats() -> None:
    """BatchNorm updates running stats in train mode only."""
    model = CNN(num_outputs=3, features=(4,), use_batch_norm=True)
    x = jax.random.normal(KEY, (4, 8, 8, 1)) * 2.0 + 1.0
    variables = model.init(KEY, x, train=False)
    stats = variables["batch_stats"]["bn_0"]
    np.testing.assert_array_equal(stats["mean"], 0.0)
    np.testing.assert_array_equal(stats["var"], 1.0)

    _, updates = model.apply(
        variables,
        x,
        train=True,
        rngs={"dropout": jax.random.key(1)},
        mutable=["batch_stats"],
    )
    # Reference: running = 0.9 * old + 0.1 * batch statistic of conv output.
    conv = nn.Conv(4, (3, 3), padding="SAME")
    feats = conv.apply({"params": variables["params"]["conv_0"]}, x)
    new = updates["batch_stats"]["bn_0"]
    np.testing.assert_allclose(new["mean"], 0.1 * feats.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * feats.var(axis=(0, 1, 2)), rtol=1e-4)

    _, eval_updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree_util.tree_map(
        np.testing.assert_array_equal,
        eval_updates["batch_stats"],
        variables["batch_stats"],
    )


def test_cnn_batch_norm_axis_syncs_statistics() -> None:
    """Inside layers.batch_norm_axis, shard statistics equal full-batch statistics."""
    x = jax.random.normal(KEY, (2, 3, 8, 8, 1))  # 2 shards of 3 examples
    model = CNN(num_outputs=2, features=(4,), use_batch_norm=True)
    variables = model.init(KEY, x[0], train=False)

    def step(xs: jax.Array) -> dict:
        _, updates = model.apply(
            variables,
            xs,
            train=True,
            rngs={"dropout": jax.random.key(1)},
            mutable=["batch_stats"],
        )
        return updates["batch_stats"]

    # vmap with an axis name exercises the same collectives as pmap; the context is read while tracing.
    with layers.batch_norm_axis("batch"):
        sharded = jax.vmap(step, axis_name="batch")(x)
    full = step(x.reshape((6, 8, 8, 1)))
    for shard in range(2):
        jax.tree_util.tree_map(
            lambda s, f, i=shard: np.testing.assert_allclose(s[i], f, rtol=1e-5, atol=1e-6),
            sharded,
            full,
        )
    # Outside the context each shard keeps its own statistics.
    unsynced = jax.vmap(step, axis_name="batch")(x)
    assert not np.allclose(unsynced["bn_0"]["mean"][0], full["bn_0"]["mean"])


@pytest.mark.parametrize(
    "name, shape",
    [("cnn", (2, 8, 8, 1)), ("mlp", (2, 6)), ("logistic_regression", (2, 6))],
)
def test_bfloat16_compute_float32_params(name: str, shape: tuple) -> None:
    """bfloat16 compute gives bfloat16 logits with float32 params."""
    kwargs = {"use_batch_norm": True} if name == "cnn" else {}
    model = create_model(name, num_outputs=3, dtype=jnp.bfloat16, **kwargs)
    x = jax.random.normal(KEY, shape)
    variables = model.init(KEY, x, train=False)
    for leaf in jax.tree_util.tree_leaves(variables):
        assert leaf.dtype == jnp.float32
    logits = model.apply(variables, x, train=False)
    assert logits.dtype == jnp.bfloat16
    assert logits.shape == (2, 3)


# --------------------------------------------------------------------------
# Parameter counting
# --------------------------------------------------------------------------


def test_count_params_logistic_regression() -> None:
    """30 weights plus one bias make 31 parameters."""
    model = create_model("logistic_regression", num_outputs=1)
    variables = model.init(KEY, jnp.zeros((2, 30)), train=False)
    assert count_params(variables["params"]) == 31


def test_count_params_mlp() -> None:
    """MLP parameter count equals the sum of its dense layers."""
    model = MLP(num_outputs=4, hidden_sizes=(8, 5))
    variables = model.init(KEY, jnp.zeros((2, 30)), train=False)
    expected = (30 * 8 + 8) + (8 * 5 + 5) + (5 * 4 + 4)
    assert count_params(variables["params"]) == expected


def test_count_params_cnn_default() -> None:
    """Default CNN parameter count equals a by-hand layer count."""
    model = create_model("cnn", num_outputs=10)
    variables = model.init(KEY, jnp.zeros((2, 8, 8, 1)), train=False)
    k, channels, size = 3, 1, 8
    expected = 0
    for feat in (32, 64):
        expected += k * k * channels * feat + feat
        channels = feat
        size = -(-size // 2)  # SAME max-pool: ceil(size / 2)
    flat = size * size * channels
    expected += flat * 128 + 128 + 128 * 10 + 10
    assert expected == 53002
    assert count_params(variables["params"]) == expected


# --------------------------------------------------------------------------
# Convolution against an independent reference
# --------------------------------------------------------------------------

IMAGE = np.array(
    [
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 1, 1, 0],
        [0, 1, 1, 0, 0],
    ],
    dtype=np.float32,
)
X_FILTER = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)


def test_conv_matches_course_example_and_scipy() -> None:
    """Conv with the X filter matches scipy and the course matrix."""
    conv = nn.Conv(1, (3, 3), padding="VALID", use_bias=False)
    x = jnp.asarray(IMAGE)[None, :, :, None]
    variables = conv.init(KEY, x)
    assert variables["params"]["kernel"].shape == (3, 3, 1, 1)
    kernel = jnp.asarray(X_FILTER)[:, :, None, None]
    out = conv.apply({"params": {"kernel": kernel}}, x)[0, :, :, 0]
    np.testing.assert_allclose(out, correlate2d(IMAGE, X_FILTER, mode="valid"))
    np.testing.assert_allclose(out, [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


@pytest.mark.parametrize("n, p, f, s", [(5, 0, 3, 1), (5, 1, 3, 2)])
def test_conv_output_size_formula(n: int, p: int, f: int, s: int) -> None:
    """Conv output size follows (N + 2P - F) / S + 1."""
    expected = (n + 2 * p - f) // s + 1
    assert expected == 3
    conv = nn.Conv(1, (f, f), strides=(s, s), padding=((p, p), (p, p)))
    x = jnp.ones((1, n, n, 1))
    out, _ = conv.init_with_output(KEY, x)
    assert out.shape == (1, expected, expected, 1)
