"""GoogLeNet: parameter counts with and without aux heads, torchvision weight import and outputs, bfloat16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxdl import convert, models
from jaxdl.models.googlenet import GoogLeNet, adaptive_avg_pool, max_pool
from tests.torch_reference import randomize_norm_stats, relative_error

# At 80x80 every ceil-mode max-pool of the stem and body yields one more row than floor mode would,
# and the aux heads see 5x5 maps, so adaptive pooling to 4x4 uses overlapping bins.
SIZE = 80


@functools.partial(jax.jit, static_argnums=(0,))
def _eval(model, variables, x):
    return model.apply(variables, x, train=False)


@functools.partial(jax.jit, static_argnums=(0,))
def _train(model, variables, x, key):
    return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])


def _torch_googlenet(seed: int = 0, **kwargs) -> torch.nn.Module:
    """torchvision's GoogLeNet (10 classes) with He-initialised weights and random BatchNorm terms.

    torch's default init shrinks the signal through the 22 layers until the logits are almost the
    head's bias; He init keeps the input visible in the output, so the comparison tests every layer.
    """
    torch.manual_seed(seed)
    net = torchvision.models.googlenet(num_classes=10, init_weights=False, **kwargs)
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
                torch.nn.init.kaiming_normal_(layer.weight)
    randomize_norm_stats(net, seed)
    return net


def _images(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32)


def _compare_eval(net: torch.nn.Module, size: int, **model_kwargs) -> float:
    """Relative error of the jaxdl GoogLeNet (weights imported from `net`) against `net` in eval mode.

    Like tests.torch_reference.compare_with_torch, but jitted: run op by op, the full GoogLeNet
    compiles each operation separately, which takes several times longer on CPU.
    """
    net.eval()
    x = _images(size)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    # The two images must give clearly different logits, or a wrong early layer could go unnoticed.
    assert relative_error(expected[0], expected[1]) > 1e-2
    model = models.create_model("googlenet", num_outputs=10, **model_kwargs)
    variables = convert.from_torch(model, net.state_dict(), input_shape=(1, size, size, 3))
    ours = _eval(model, variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert ours.shape == expected.shape
    return relative_error(ours, expected)


def test_param_counts_with_and_without_aux() -> None:
    """Without the aux heads the count is torchvision's published one; with them, torchvision's aux model's."""
    published = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.meta["num_params"]
    assert published == 6_624_904
    shape = (1, 224, 224, 3)
    plain = models.abstract_variables(models.create_model("googlenet", num_outputs=1000, aux_logits=False), shape)
    assert "aux1" not in plain["params"] and "aux2" not in plain["params"]
    assert models.count_params(plain["params"]) == published

    model = models.create_model("googlenet", num_outputs=1000)
    assert isinstance(model, GoogLeNet) and model.aux_logits
    params = models.abstract_variables(model, shape)["params"]
    assert {"aux1", "aux2"} <= set(params)
    assert models.count_params({k: v for k, v in params.items() if k not in ("aux1", "aux2")}) == published
    reference = torchvision.models.googlenet(aux_logits=True, init_weights=False)
    assert models.count_params(params) == sum(p.numel() for p in reference.parameters())


def test_pooling_helpers_match_torch() -> None:
    """max_pool (ceil mode, padding) and adaptive_avg_pool reproduce torch's output sizes and values."""
    x = np.random.default_rng(1).standard_normal((1, 2, 11, 6)).astype(np.float32)
    ours_x = jnp.asarray(x.transpose(0, 2, 3, 1))
    for kernel, stride, padding, ceil_mode in [(3, 2, 0, True), (2, 2, 0, True), (3, 1, 1, True), (3, 2, 1, False)]:
        expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), kernel, stride, padding, ceil_mode=ceil_mode)
        ours = max_pool(ours_x, kernel, stride, padding, ceil_mode=ceil_mode)
        np.testing.assert_array_equal(np.asarray(ours), expected.numpy().transpose(0, 2, 3, 1))
    for output_size in [(4, 4), (4, 3), (1, 1)]:
        expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), output_size)
        ours = adaptive_avg_pool(ours_x, output_size)
        np.testing.assert_allclose(np.asarray(ours), expected.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_eval_logits_match_torchvision() -> None:
    """torchvision googlenet(aux_logits=False) and jaxdl's agree in eval mode."""
    assert _compare_eval(_torch_googlenet(aux_logits=False), SIZE, aux_logits=False) <= 1e-4


def test_train_outputs_match_torchvision_with_aux() -> None:
    """In training (dropout off, batch statistics) the logits and both aux logits equal torchvision's."""
    net = _torch_googlenet(seed=1, aux_logits=True, dropout=0.0, dropout_aux=0.0).train()
    x = _images(SIZE, seed=1)
    with torch.no_grad():
        expected = net(torch.from_numpy(x))
    model = models.create_model("googlenet", num_outputs=10, dropout_rate=0.0, aux_dropout_rate=0.0)
    variables = convert.from_torch(model, net.state_dict(), input_shape=(1, SIZE, SIZE, 3))
    outputs, updates = _train(model, variables, jnp.asarray(x.transpose(0, 2, 3, 1)), jax.random.key(0))
    assert isinstance(outputs, tuple) and len(outputs) == 3
    assert set(updates["batch_stats"]) == set(variables["batch_stats"])
    # torchvision returns (logits, aux_logits2, aux_logits1); jaxdl returns (logits, aux1, aux2).
    for ours, reference in zip(outputs, (expected.logits, expected.aux_logits1, expected.aux_logits2), strict=True):
        assert ours.shape == (2, 10)
        assert relative_error(ours, reference.numpy()) <= 1e-4


def test_cifar_stem_and_transform_input_match_torchvision() -> None:
    """cifar_stem (and transform_input) equal torchvision's GoogLeNet with a 3x3 stride-1 conv1 and no stem pools."""
    net = _torch_googlenet(seed=2, aux_logits=False, transform_input=True)
    net.conv1.conv = torch.nn.Conv2d(3, 64, kernel_size=3, padding=1, bias=False)
    net.maxpool1 = torch.nn.Identity()
    net.maxpool2 = torch.nn.Identity()
    error = _compare_eval(net, 32, aux_logits=False, cifar_stem=True, transform_input=True)
    assert error <= 1e-4


def test_state_dicts_with_or_without_aux_tensors() -> None:
    """A model without aux heads takes state dicts with or without aux tensors; one with aux heads needs them."""
    state = {k: v.numpy() for k, v in _torch_googlenet(aux_logits=True).state_dict().items()}
    assert any(k.startswith("aux1.") for k in state) and any(k.startswith("aux2.") for k in state)
    without_aux = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    shape = (1, 64, 64, 3)
    plain = models.create_model("googlenet", num_outputs=10, aux_logits=False)
    from_plain = convert.from_torch(plain, without_aux, input_shape=shape)
    from_full = convert.from_torch(plain, state, input_shape=shape)
    leaves_plain, leaves_full = jax.tree_util.tree_leaves_with_path(from_plain), jax.tree.leaves(from_full)
    assert len(leaves_plain) == len(leaves_full)
    for (path, a), b in zip(leaves_plain, leaves_full, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))

    with_aux = models.create_model("googlenet", num_outputs=10)
    imported = convert.from_torch(with_aux, state, input_shape=shape)
    np.testing.assert_array_equal(imported["params"]["aux2"]["fc1"]["kernel"], state["aux2.fc1.weight"].T)
    with pytest.raises(convert.StateDictError, match=r"missing tensor 'aux1\.conv\.conv\.weight'"):
        convert.from_torch(with_aux, without_aux, input_shape=shape)


@pytest.mark.slow
def test_tiny_bfloat16_and_aux_training() -> None:
    """googlenet_tiny in bfloat16: float32 params, one output in eval, (logits, aux1, aux2) in training with
    dropout that is deterministic per key."""
    model = models.create_model("googlenet_tiny", num_outputs=5, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    assert {"aux1", "aux2"} <= set(abstract["params"])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))
    # Random values from numpy: compiling init's ~65 random draws would cost far more CPU time than the test.
    rng = np.random.default_rng(0)
    variables = {
        "params": jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), abstract["params"]),
        "batch_stats": jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), abstract["batch_stats"]),
    }

    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert isinstance(logits, jax.ShapeDtypeStruct)
    assert logits.shape == (2, 5) and logits.dtype == jnp.bfloat16

    out_a, updates = _train(model, variables, x, jax.random.key(2))
    out_b, _ = _train(model, variables, x, jax.random.key(2))
    out_c, _ = _train(model, variables, x, jax.random.key(3))
    assert len(out_a) == 3
    for a, b, c in zip(out_a, out_b, out_c, strict=True):
        assert a.shape == (2, 5) and a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
        assert not np.array_equal(np.asarray(a, np.float32), np.asarray(c, np.float32))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(updates))

    plain = models.create_model("googlenet_tiny", num_outputs=5, aux_logits=False)
    plain_variables = jax.eval_shape(lambda x: plain.init(jax.random.key(0), x), x)
    assert "aux1" not in plain_variables["params"]
    train_logits = jax.eval_shape(
        lambda v, x: plain.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]),
        plain_variables,
        x,
    )[0]
    assert isinstance(train_logits, jax.ShapeDtypeStruct) and train_logits.shape == (2, 5)
