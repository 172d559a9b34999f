"""The model and converter registries: registration at the definition, hyperparameter checks, BatchNorm's axis."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import convert, models
from jaxdl.models import layers, registry


# A family defined here, as a new family file would: no list anywhere is edited.
@models.register("toy_test_mlp", hidden=4)
class ToyMLP(nn.Module):
    """One hidden layer; exists only to test registration."""

    num_outputs: int
    hidden: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits (batch, num_outputs)."""
        del train
        return nn.Dense(self.num_outputs)(nn.relu(nn.Dense(self.hidden)(x)))


def test_a_family_registers_itself_at_its_definition() -> None:
    assert "toy_test_mlp" in models.list_models()
    model = models.create_model("toy_test_mlp", num_outputs=3)
    assert isinstance(model, ToyMLP) and (model.num_outputs, model.hidden) == (3, 4)
    assert models.model_defaults("toy_test_mlp") == {"hidden": 4}
    assert models.model_fields("toy_test_mlp") == ["hidden", "num_outputs"]
    assert models.model_class("toy_test_mlp") is ToyMLP
    assert model.apply(model.init(jax.random.key(0), jnp.ones((2, 5))), jnp.ones((2, 5))).shape == (2, 3)


def test_a_taken_name_raises_for_another_class() -> None:
    class OtherToy(nn.Module):
        num_outputs: int

    with pytest.raises(ValueError, match="'toy_test_mlp' is already registered by tests.test_registry.ToyMLP"):
        models.register("toy_test_mlp")(OtherToy)
    with pytest.raises(ValueError, match="already registered"):
        models.register("toy_test_mlp", hidden=5)(ToyMLP)  # Same class, other defaults.
    with pytest.raises(ValueError, match="already registered"):
        models.register("resnet18")(OtherToy)
    assert models.register("toy_test_mlp", hidden=4)(ToyMLP) is ToyMLP  # The very same registration again.
    assert models.model_class("toy_test_mlp") is ToyMLP


def test_defaults_must_be_fields() -> None:
    with pytest.raises(TypeError, match="'widht'"):
        models.register("toy_test_typo", widht=3)(ToyMLP)
    assert "toy_test_typo" not in models.list_models()


def test_every_family_file_is_discovered() -> None:
    names = set(models.list_models())
    for name in (
        "ar",
        "cnn",
        "convnext_tiny",
        "densenet121",
        "efficientnet_b0",
        "googlenet",
        "gru",
        "logistic_regression",
    ):
        assert name in names
    for name in ("lstm", "mlp", "plain18", "resnet50", "rnn", "vgg16_bn", "vit_b_16"):
        assert name in names


def test_unknown_name_and_argument() -> None:
    with pytest.raises(
        ValueError, match=r"^unknown model 'resnet19'; choose one of: ar, classifier, classifier_tiny, cnn, "
    ):
        models.create_model("resnet19", num_outputs=2)
    with pytest.raises(TypeError, match=r"unknown argument\(s\) 'axis_name' for model 'resnet18'; valid fields: "):
        models.create_model("resnet18", num_outputs=2, axis_name="batch")


INVALID = [
    ("cnn", {"features": (0, 64)}, "features=(0, 64) is not valid; every width must be > 0"),
    ("cnn", {"features": [32, -1]}, "features=(32, -1) is not valid; every width must be > 0"),
    ("cnn", {"dropout_rate": 1.5}, "dropout_rate=1.5 is not valid; it must be in [0, 1)"),
    ("cnn", {"dense_features": 0}, "dense_features=0 is not valid; it must be > 0"),
    ("mlp", {"hidden_sizes": (8, 0)}, "hidden_sizes=(8, 0) is not valid; every width must be > 0"),
    ("mlp", {"dropout_rate": -0.1}, "dropout_rate=-0.1 is not valid; it must be in [0, 1)"),
    ("resnet18", {"stage_sizes": (2, 0, 2, 2)}, "stage_sizes=(2, 0, 2, 2) is not valid; every depth must be >= 1"),
    ("resnet18", {"width": 0}, "width=0 is not valid; it must be > 0"),
    ("vgg11", {"dropout_rate": 1.0}, "dropout_rate=1.0 is not valid; it must be in [0, 1)"),
    ("vgg11", {"classifier_width": 0}, "classifier_width=0 is not valid; it must be > 0"),
    ("vgg11", {"config": (0, "M")}, "config=(0, 'M') is not valid; every width must be > 0"),
    ("vit_mini", {"num_layers": 0}, "num_layers=0 is not valid; it must be >= 1"),
    ("vit_mini", {"hidden_dim": 0}, "hidden_dim=0 is not valid; it must be > 0"),
    ("vit_mini", {"attention_dropout": 1.0}, "attention_dropout=1.0 is not valid; it must be in [0, 1)"),
    ("convnext_mini", {"widths": (8, 0, 32, 64)}, "widths=(8, 0, 32, 64) is not valid; every width must be > 0"),
    ("convnext_mini", {"depths": (1, 0, 1, 1)}, "depths=(1, 0, 1, 1) is not valid; every depth must be >= 1"),
    ("convnext_mini", {"stochastic_depth_rate": 1.0}, "stochastic_depth_rate=1.0 is not valid; it must be in [0, 1)"),
    ("densenet_tiny", {"growth_rate": 0}, "growth_rate=0 is not valid; it must be > 0"),
    ("densenet_tiny", {"block_config": (2, 0)}, "block_config=(2, 0) is not valid; every depth must be >= 1"),
    ("densenet_tiny", {"compression": 0.0}, "compression=0.0 is not valid; it must be in (0, 1]"),
    ("efficientnet_tiny", {"dropout_rate": 2}, "dropout_rate=2 is not valid; it must be in [0, 1)"),
    ("efficientnet_tiny", {"width_mult": 0.0}, "width_mult=0.0 is not valid; it must be > 0"),
    ("googlenet_tiny", {"aux_dropout_rate": 1.2}, "aux_dropout_rate=1.2 is not valid; it must be in [0, 1)"),
    ("googlenet_tiny", {"width": 0}, "width=0 is not valid; it must be > 0"),
    ("lstm", {"hidden_size": 0}, "hidden_size=0 is not valid; it must be > 0"),
    ("gru", {"num_layers": 0}, "num_layers=0 is not valid; it must be >= 1"),
    ("rnn", {"dropout_rate": 1.0}, "dropout_rate=1.0 is not valid; it must be in [0, 1)"),
    ("lstm", {"embed_dim": 0, "vocab_size": 10}, "embed_dim=0 is not valid; it must be > 0"),
    ("lstm", {"vocab_size": -1}, "vocab_size=-1 is not valid; it must be >= 0"),
]


@pytest.mark.parametrize(("name", "kwargs", "message"), INVALID, ids=[f"{n}-{next(iter(k))}" for n, k, _ in INVALID])
def test_out_of_range_hyperparameters_name_their_field(name: str, kwargs: dict, message: str) -> None:
    """The message starts with `field=value`, so a config layer can prefix its own key path."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        models.create_model(name, num_outputs=2, **kwargs)


# Fields that hold a rate, a width or a depth, by name; each family must check every one it has.
_CHECKED = re.compile(r"(rate|dropout|_size|_sizes|_dim|width|widths|depths|features|num_layers|num_heads|_config)$")


@pytest.mark.parametrize("name", sorted({models.model_class(n).__name__: n for n in models.list_models()}.values()))
def test_every_rate_width_and_depth_field_is_checked(name: str) -> None:
    cls = models.model_class(name)
    sized = {f for f in models.model_fields(name) if _CHECKED.search(f)} - {"config"}
    assert sized <= set(getattr(cls, "checks", {})), f"{cls.__name__} does not check {sized - set(cls.checks)}"
    models.create_model(name, num_outputs=2)  # The registered defaults themselves pass.


def test_check_helpers_accept_the_edges() -> None:
    registry.probability("p", 0.0)
    registry.positive("w", None)  # None: the model's own default.
    registry.all_positive("w", ())
    registry.at_least_one("n", 1)
    registry.all_at_least_one("d", [1, 2])
    with pytest.raises(ValueError, match=r"^d=\(\) is not valid"):
        registry.all_at_least_one("d", ())


def test_converters_register_themselves() -> None:
    table = convert.converters()
    names = {cls.__name__ for cls in table}
    assert {
        "Classifier",
        "ConvNeXt",
        "DenseNet",
        "EfficientNet",
        "GoogLeNet",
        "RecurrentNet",
        "ResNet",
        "VGG",
        "ViT",
    } <= names
    with pytest.raises(
        ValueError, match=r"^no PyTorch converter for ToyMLP; converters exist for: Classifier, ConvNeXt, "
    ):
        convert.from_torch("toy_test_mlp", {}, num_outputs=2, input_shape=(1, 5))
    resnet = models.model_class("resnet18")
    with pytest.raises(ValueError, match="ResNet already has a PyTorch converter"):
        convert.register(resnet)(lambda importer, model: None)
    assert convert.register(resnet)(table[resnet]) is table[resnet]


@pytest.mark.slow
def test_abstract_variables_are_shapes_only() -> None:
    model = models.create_model("resnet_tiny", num_outputs=10)
    variables = models.abstract_variables(model, models.default_input_shape(model))
    assert models.default_input_shape(model) == (1, 32, 32, 3)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(variables))
    assert models.count_params(variables["params"]) == models.count_params(
        model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), train=False)["params"]
    )
    lstm = models.create_model("lstm", num_outputs=2, hidden_size=3, vocab_size=5, embed_dim=2)
    assert models.input_dtype(lstm) == jnp.int32
    assert models.abstract_variables(lstm, (1, 4))["params"]["embed"]["embedding"].shape == (5, 2)


def test_pmap_batch_norm_statistics_equal_the_global_batch() -> None:
    """Under pmap inside `batch_norm_axis`, every device's BatchNorm statistics are the global batch's."""
    devices = jax.local_device_count()
    if devices < 2:
        pytest.skip("needs several devices (tests/conftest.py forces 8 CPU devices)")
    model = models.create_model("resnet_tiny", num_outputs=3)
    x = jax.random.normal(jax.random.key(1), (devices * 2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x[:1], train=False)

    def batch_stats(xs: jax.Array) -> dict:
        _, updates = model.apply(variables, xs, train=True, mutable=["batch_stats"])
        return updates["batch_stats"]

    with layers.batch_norm_axis("batch"):
        per_device = jax.pmap(batch_stats, axis_name="batch")(x.reshape(devices, 2, 32, 32, 3))
    global_batch = jax.jit(batch_stats)(x)
    for device in range(devices):
        jax.tree.map(
            lambda d, g, i=device: np.testing.assert_allclose(d[i], g, rtol=1e-4, atol=1e-5), per_device, global_batch
        )
    # Without the context, each device normalises by its own two examples. (A new function: jit and pmap
    # cache traces by function, and the context is not part of their cache key.)
    alone = jax.pmap(lambda xs: batch_stats(xs), axis_name="batch")(x.reshape(devices, 2, 32, 32, 3))
    assert not np.allclose(alone["bn1"]["mean"][0], global_batch["bn1"]["mean"], rtol=1e-3)
    assert layers.current_batch_norm_axis() is None
