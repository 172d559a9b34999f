"""Recurrent networks (RNN, LSTM, GRU), their PyTorch import, and the AR baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxdl import convert, models
from jaxdl.convert.recurrent import from_torch_rnn
from jaxdl.models.ar import AR, ar_variables, fit_ar, predict_ar
from tests.torch_reference import relative_error

KEY = jax.random.key(0)
TORCH_CLASSES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def _jit(model):
    """(init, apply) of `model`, compiled once each: eager calls would recompile every scan."""
    return jax.jit(model.init), jax.jit(model.apply, static_argnames=("train", "mutable"))


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _numpy_cell(cell: str, p: dict, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step of `cell` written gate by gate from the course's equations, in float64."""
    hidden = h.shape[-1]

    def block(name: str, gate: int) -> np.ndarray:
        return np.asarray(p[name], np.float64)[..., gate * hidden : (gate + 1) * hidden]

    def pre(gate: int) -> np.ndarray:  # W_x x + b_x + W_h h + b_h for one gate
        return (
            x @ block("input_kernel", gate)
            + block("input_bias", gate)
            + h @ block("recurrent_kernel", gate)
            + block("recurrent_bias", gate)
        )

    if cell == "rnn":
        return np.tanh(pre(0)), c
    if cell == "lstm":
        i, f, g, o = _sigmoid(pre(0)), _sigmoid(pre(1)), np.tanh(pre(2)), _sigmoid(pre(3))
        c = f * c + i * g
        return o * np.tanh(c), c
    r, z = _sigmoid(pre(0)), _sigmoid(pre(1))
    n = np.tanh(
        x @ block("input_kernel", 2)
        + block("input_bias", 2)
        + r * (h @ block("recurrent_kernel", 2) + block("recurrent_bias", 2))
    )
    return (1 - z) * n + z * h, c


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cells_follow_the_equations(cell: str) -> None:
    """Three steps of each cell match a gate-by-gate numpy reference, from a zero state."""
    model = models.create_model(cell, num_outputs=0, hidden_size=3, output="sequence")
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    init, apply = _jit(model)
    variables = init(KEY, x)
    params = variables["params"]["layer_0"]
    assert params["recurrent_kernel"].shape == (3, {"rnn": 1, "lstm": 4, "gru": 3}[cell] * 3)
    ours = np.asarray(apply(variables, x))
    h = c = np.zeros((2, 3))
    for t in range(3):
        h, c = _numpy_cell(cell, params, x[:, t].astype(np.float64), h, c)
        np.testing.assert_allclose(ours[:, t], h, rtol=1e-5, atol=1e-6)
    last = _jit(models.create_model(cell, num_outputs=0, hidden_size=3))[1](variables, x)
    np.testing.assert_allclose(last, h, rtol=1e-5, atol=1e-6)


def test_lstm_single_step_by_hand() -> None:
    """One LSTM unit, one step from zero state, with weights chosen so the arithmetic is easy to follow."""
    model = models.create_model("lstm", num_outputs=0, hidden_size=1)
    # x = 2; gate pre-activations: i = 0.5*2 = 1, f = anything (c0 = 0), g = 0.25*2 = 0.5, o = 0 + 0.3 bias.
    params = {
        "layer_0": {
            "input_kernel": jnp.array([[0.5, 1.0, 0.25, 0.0]]),
            "recurrent_kernel": jnp.zeros((1, 4)),
            "input_bias": jnp.array([0.0, 0.0, 0.0, 0.1]),
            "recurrent_bias": jnp.array([0.0, 0.0, 0.0, 0.2]),
        }
    }
    h = model.apply({"params": params}, jnp.array([[[2.0]]]))
    c = 1 / (1 + np.exp(-1.0)) * np.tanh(0.5)  # i * g, since f * c0 = 0
    expected = 1 / (1 + np.exp(-0.3)) * np.tanh(c)
    np.testing.assert_allclose(h, [[expected]], rtol=1e-6)


def _torch_module(cell: str, input_size: int, hidden: int, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TORCH_CLASSES[cell](input_size, hidden, batch_first=True, **kwargs).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_matches_imported_torch_module(cell: str) -> None:
    """2-layer bidirectional torch modules: every step's output and the final states agree after import."""
    torch_rnn = _torch_module(cell, 3, 5, num_layers=2, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((2, 7, 3)).astype(np.float32)
    with torch.no_grad():
        expected, h_n = torch_rnn(torch.from_numpy(x))
    if cell == "lstm":
        h_n = h_n[0]
    kwargs = dict(num_outputs=0, hidden_size=5, num_layers=2, bidirectional=True)
    sequence_model = models.create_model(cell, output="sequence", **kwargs)
    variables = from_torch_rnn(sequence_model, torch_rnn.state_dict())
    ours = _jit(sequence_model)[1](variables, x)
    assert ours.shape == (2, 7, 10)
    assert relative_error(ours, expected.numpy()) < 1e-5
    last = _jit(models.create_model(cell, **kwargs))[1](variables, x)
    assert relative_error(last, torch.cat([h_n[-2], h_n[-1]], dim=-1).numpy()) < 1e-5

    # With a head: a torch Linear on the final states, imported alongside.
    torch.manual_seed(1)
    head = torch.nn.Linear(10, 4)
    with torch.no_grad():
        expected_logits = head(torch.cat([h_n[-2], h_n[-1]], dim=-1)).numpy()
    model = models.create_model(cell, num_outputs=4, hidden_size=5, num_layers=2, bidirectional=True)
    variables = from_torch_rnn(model, torch_rnn.state_dict(), head=head)
    assert relative_error(_jit(model)[1](variables, x), expected_logits) < 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gradients_match_torch_autograd(cell: str) -> None:
    """The hand-written backward pass: weight gradients equal torch's, with padding and both directions."""
    from flax import traverse_util

    torch_rnn = _torch_module(cell, 3, 5, num_layers=2, bidirectional=True)
    torch.manual_seed(2)
    head = torch.nn.Linear(10, 2)
    rng = np.random.default_rng(0)
    x, lengths = rng.standard_normal((3, 6, 3)).astype(np.float32), np.array([6, 2, 4])
    weights = rng.standard_normal((3, 6, 10)).astype(np.float32)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
    )
    out, h_n = torch_rnn(packed)
    out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=6)[0]
    h_n = h_n[0] if cell == "lstm" else h_n
    # A loss on every step's output and on the head over the final states reaches all gradient paths.
    loss = (out * torch.from_numpy(weights)).sum() + (head(torch.cat([h_n[-2], h_n[-1]], -1)) ** 2).sum()
    loss.backward()

    kwargs = dict(hidden_size=5, num_layers=2, bidirectional=True)
    seq_model = models.create_model(cell, num_outputs=0, output="sequence", **kwargs)
    model = models.create_model(cell, num_outputs=2, **kwargs)
    variables = from_torch_rnn(model, torch_rnn.state_dict(), head=head)

    def loss_fn(params):
        body = {k: v for k, v in params.items() if k != "head"}
        out = seq_model.apply({"params": body}, x, lengths=lengths)
        return jnp.sum(out * weights) + jnp.sum(model.apply({"params": params}, x, lengths=lengths) ** 2)

    grads = traverse_util.flatten_dict(jax.jit(jax.grad(loss_fn))(variables["params"]), sep="/")
    for name, param in torch_rnn.named_parameters():
        kind, direction, layer = name.split("_")[0], name.split("_")[1], name.split("_l")[1]
        path = (
            f"layer_{layer}/{'input' if direction == 'ih' else 'recurrent'}_{'kernel' if kind == 'weight' else 'bias'}"
        )
        expected = param.grad.numpy().T if kind == "weight" else param.grad.numpy()
        assert relative_error(grads[path], expected) < 1e-5, name
    assert relative_error(grads["head/kernel"], head.weight.grad.numpy().T) < 1e-5


def test_from_torch_with_head_in_state_dict_and_errors() -> None:
    """The generic from_torch reads `head.*` from the same dict; missing or mis-shaped tensors are named."""
    torch_rnn = _torch_module("gru", 2, 4)
    head = torch.nn.Linear(4, 3)
    state = {**torch_rnn.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}
    model = models.create_model("gru", num_outputs=3, hidden_size=4)
    x = np.random.default_rng(0).standard_normal((2, 5, 2)).astype(np.float32)
    variables = convert.from_torch(model, state, input_shape=(1, 5, 2))
    with torch.no_grad():
        expected = head(torch_rnn(torch.from_numpy(x))[1][-1]).numpy()
    assert relative_error(model.apply(variables, x), expected) < 1e-5

    with pytest.raises(convert.StateDictError, match="missing tensor 'head.weight'"):
        from_torch_rnn(model, torch_rnn.state_dict())
    with pytest.raises(convert.StateDictError, match="weight_hh_l0"):
        from_torch_rnn(models.create_model("lstm", num_outputs=0, hidden_size=4), torch_rnn.state_dict())


def test_torch_module_without_bias_and_with_prefix() -> None:
    """bias=False imports as zero biases; a prefix such as 'rnn.' is stripped."""
    torch_rnn = _torch_module("lstm", 2, 3, bias=False)
    x = np.random.default_rng(0).standard_normal((1, 4, 2)).astype(np.float32)
    with torch.no_grad():
        expected = torch_rnn(torch.from_numpy(x))[0].numpy()
    model = models.create_model("lstm", num_outputs=0, hidden_size=3, output="sequence")
    state = {f"rnn.{k}": v for k, v in torch_rnn.state_dict().items()}
    variables = from_torch_rnn(model, state, prefix="rnn.")
    np.testing.assert_array_equal(variables["params"]["layer_0"]["input_bias"], np.zeros(12))
    assert relative_error(model.apply(variables, x), expected) < 1e-5


def _padded_batch() -> tuple[np.ndarray, np.ndarray]:
    """Three sequences of lengths 6, 2, 4 padded to 6 steps with large garbage values."""
    rng = np.random.default_rng(3)
    lengths = np.array([6, 2, 4])
    x = rng.standard_normal((3, 6, 3)).astype(np.float32)
    for b, n in enumerate(lengths):
        x[b, n:] = 1e3
    return x, lengths


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_variable_length_equals_each_sequence_alone(cell: str) -> None:
    """Padded bidirectional outputs equal each unpadded sequence run alone, and torch's packed sequences."""
    x, lengths = _padded_batch()
    kwargs = dict(num_outputs=0, hidden_size=4, num_layers=2, bidirectional=True)
    seq_model = models.create_model(cell, output="sequence", **kwargs)
    last_model = models.create_model(cell, **kwargs)
    (seq_init, seq_apply), last_apply = _jit(seq_model), _jit(last_model)[1]
    variables = seq_init(KEY, x)
    padded = np.asarray(seq_apply(variables, x, lengths=lengths))
    padded_last = np.asarray(last_apply(variables, x, lengths=lengths))
    for b, n in enumerate(lengths):
        alone = seq_apply(variables, x[b : b + 1, :n])[0]
        np.testing.assert_allclose(padded[b, :n], alone, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(padded[b, n:], 0.0)
        # Forward final = state at the true last step; backward final = state after step 0.
        np.testing.assert_allclose(padded_last[b], np.concatenate([alone[-1, :4], alone[0, 4:]]), rtol=1e-5, atol=1e-6)

    torch_rnn = _torch_module(cell, 3, 4, num_layers=2, bidirectional=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
    )
    with torch.no_grad():
        out, h_n = torch_rnn(packed)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=6)
    h_n = h_n[0] if cell == "lstm" else h_n
    variables = from_torch_rnn(seq_model, torch_rnn.state_dict())
    assert relative_error(seq_apply(variables, x, lengths=lengths), expected.numpy()) < 1e-5
    expected_last = torch.cat([h_n[-2], h_n[-1]], dim=-1).numpy()
    assert relative_error(last_apply(variables, x, lengths=lengths), expected_last) < 1e-5


def test_token_ids_use_padding_zero_as_length() -> None:
    """With vocab_size > 0, integer ids are embedded and id 0 marks padding; matches torch."""
    ids = np.array([[5, 2, 7, 1, 0, 0], [3, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]], np.int32)
    lengths = np.array([4, 1, 6])
    torch.manual_seed(0)
    embed = torch.nn.Embedding(8, 3)
    torch_rnn = _torch_module("gru", 3, 4, bidirectional=True)
    head = torch.nn.Linear(8, 2)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        embed(torch.from_numpy(ids).long()), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
    )
    with torch.no_grad():
        h_n = torch_rnn(packed)[1]
        expected = head(torch.cat([h_n[-2], h_n[-1]], dim=-1)).numpy()
    model = models.create_model("gru", num_outputs=2, hidden_size=4, bidirectional=True, vocab_size=8, embed_dim=3)
    variables = from_torch_rnn(model, torch_rnn.state_dict(), head=head, embedding=embed)
    apply = _jit(model)[1]
    assert relative_error(apply(variables, ids), expected) < 1e-5
    np.testing.assert_allclose(apply(variables, ids, lengths=lengths), expected, atol=1e-6)
    np.testing.assert_allclose(apply(variables, ids.astype(np.int64), lengths=lengths), expected, atol=1e-6)


def test_float_token_ids_are_rejected() -> None:
    """Token ids arrive as integers; float ids are a TypeError at trace time, not a silent cast."""
    model = models.create_model("lstm", num_outputs=2, hidden_size=4, vocab_size=8, embed_dim=3)
    ids = np.array([[1, 2, 0]], np.int32)
    variables = model.init(KEY, ids)
    with pytest.raises(TypeError, match="token ids must be integers"):
        model.apply(variables, ids.astype(np.float32))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bfloat16_compute_float32_params(cell: str) -> None:
    """bfloat16 compute returns bfloat16 close to float32; params and their gradients stay float32."""
    kwargs = dict(num_outputs=3, hidden_size=8, num_layers=2, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    model = models.create_model(cell, dtype=jnp.bfloat16, **kwargs)
    init, apply = _jit(model)
    variables = init(KEY, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    out = apply(variables, x, lengths=np.array([5, 3]))
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 3)
    full = _jit(models.create_model(cell, **kwargs))[1](variables, x, lengths=np.array([5, 3]))
    np.testing.assert_allclose(np.asarray(out, np.float32), full, atol=5e-2)

    def loss(params):
        return jnp.sum(model.apply({"params": params}, x, lengths=np.array([5, 3])).astype(jnp.float32) ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for leaf in jax.tree_util.tree_leaves(grads):
        assert leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf))


@pytest.mark.parametrize("lengths", [None, np.array([7, 3])])
def test_unroll_gives_the_same_numbers(lengths) -> None:
    """Unrolling the scans (also by a factor not dividing T) changes neither outputs nor gradients."""
    x = np.random.default_rng(0).standard_normal((2, 7, 3)).astype(np.float32)
    kwargs = dict(num_outputs=2, hidden_size=4, bidirectional=True, output="sequence")
    plain, unrolled = models.create_model("lstm", **kwargs), models.create_model("lstm", unroll=3, **kwargs)
    variables = jax.jit(plain.init)(KEY, x)

    def outputs_and_grads(model):
        def loss(params):
            out = model.apply({"params": params}, x, lengths=lengths)
            return jnp.sum(out * jnp.arange(out.size).reshape(out.shape) / out.size), out

        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    # 3 does not divide the 7 steps, so the remainder path runs too (forward and backward scans).
    reference_grads, reference = outputs_and_grads(plain)
    grads, out = outputs_and_grads(unrolled)
    np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, reference_grads)


def test_shapes_dropout_and_gradients() -> None:
    """[B, T] floats read as one feature; dropout acts between layers in train mode only; gradients flow."""
    model = models.create_model("gru", num_outputs=3, hidden_size=6, num_layers=2, dropout_rate=0.5)
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    init, apply = _jit(model)
    variables = init(KEY, x)
    assert variables["params"]["layer_0"]["input_kernel"].shape == (1, 18)
    assert variables["params"]["layer_1"]["input_kernel"].shape == (6, 18)
    eval_out = apply(variables, x)
    assert eval_out.shape == (4, 3)
    np.testing.assert_array_equal(eval_out, apply(variables, x, rngs={"dropout": jax.random.key(5)}))
    train_a, updates = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=("batch_stats",))
    train_b = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=("batch_stats",))[0]
    assert dict(updates) == {}
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, eval_out)

    def loss(params):
        return jnp.sum(model.apply({"params": params}, x) ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for leaf in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(leaf)) and np.any(leaf != 0)


def test_registry_and_validation() -> None:
    """rnn/lstm/gru/ar are registered; unknown cells and outputs are rejected."""
    assert {"ar", "gru", "lstm", "rnn"} <= set(models.list_models())
    assert models.create_model("gru", num_outputs=1).cell == "gru"
    assert models.model_accepts("lstm", "bidirectional")
    with pytest.raises(ValueError, match="unknown cell"):
        models.create_model("lstm", num_outputs=1, cell="transformer")
    with pytest.raises(ValueError, match="unknown output"):
        models.create_model("lstm", num_outputs=1, output="all")


def _simulate_ar2(n: int, c: float, phi: tuple[float, float], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    series = np.zeros(n + 100)
    noise = rng.standard_normal(n + 100)
    for t in range(2, n + 100):
        series[t] = c + phi[0] * series[t - 1] + phi[1] * series[t - 2] + noise[t]
    return series[100:]


def test_fit_ar_recovers_ar2_and_matches_lstsq_and_statsmodels() -> None:
    """Least squares on windows recovers a simulated AR(2) and equals lstsq and statsmodels' AutoReg."""
    from statsmodels.tsa.ar_model import AutoReg

    series = _simulate_ar2(4000, 0.5, (0.6, -0.3))
    p = 2
    windows = np.stack([series[t - p : t] for t in range(p, len(series))])
    targets = series[p:]
    c, phi = fit_ar(windows, targets)
    np.testing.assert_allclose(phi, [0.6, -0.3], atol=0.05)
    np.testing.assert_allclose(c, 0.5, atol=0.1)

    design = np.column_stack([np.ones(len(targets)), series[p - 1 : -1], series[p - 2 : -2]])
    reference = np.linalg.lstsq(design, targets, rcond=None)[0]
    np.testing.assert_allclose([c, *phi], reference, rtol=1e-10, atol=1e-12)
    statsmodels_params = AutoReg(series, lags=p, trend="c").fit().params
    np.testing.assert_allclose([c, *phi], statsmodels_params, rtol=1e-8, atol=1e-10)
    # Multi-step targets: only the one-step column is fitted.
    horizon_targets = np.stack([targets, np.roll(targets, -1)], axis=1)
    np.testing.assert_allclose(fit_ar(windows, horizon_targets)[1], phi)


def test_predict_ar_is_recursive_and_ar_module_agrees() -> None:
    """Forecasts feed back one step at a time; the registered `ar` module gives the same numbers."""
    c, phi = 0.5, np.array([0.6, -0.3])
    windows = np.array([[1.0, 2.0], [0.0, -1.0]])  # time order: X_{t-2}, X_{t-1}
    forecasts = predict_ar(c, phi, windows, horizon=3)
    step1 = 0.5 + 0.6 * 2.0 - 0.3 * 1.0  # 1.4
    step2 = 0.5 + 0.6 * step1 - 0.3 * 2.0
    step3 = 0.5 + 0.6 * step2 - 0.3 * step1
    np.testing.assert_allclose(forecasts[0], [step1, step2, step3])
    np.testing.assert_allclose(forecasts[1, 0], 0.5 - 0.6)
    model = models.create_model("ar", num_outputs=3)
    assert isinstance(model, AR)
    assert model.init(KEY, windows)["params"]["phi"].shape == (2,)
    out = model.apply(ar_variables(c, phi), jnp.asarray(windows[:, :, None], jnp.float32))
    np.testing.assert_allclose(out, forecasts, rtol=1e-6)
    with pytest.raises(ValueError, match="lags"):
        predict_ar(c, phi, np.zeros((1, 3)))
