"""The `classifier` model (any backbone + pool + dense head), its weight import and configs/my_images.py."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import configuration, experiment, models, tasks, train
from jaxdl.models.classifier import pool_features
from tests import helpers


def _vgg19_features_params() -> int:
    """torchvision's vgg19().features parameter count: the Keras `include_top=False` base, counted by torch."""
    torchvision = pytest.importorskip("torchvision")
    return sum(p.numel() for p in torchvision.models.vgg19().features.parameters())


def test_model_1_has_the_courses_parameter_count():
    """VGG19 base + Flatten(7x7x512) + Dense 1024 + Dense 512 + Dense 10, each with its bias."""
    dense = (7 * 7 * 512 * 1024 + 1024) + (1024 * 512 + 512) + (512 * 10 + 10)
    expected = _vgg19_features_params() + dense  # 46,245,450
    assert helpers.param_count("classifier", num_outputs=10) == expected
    # The configured template builds that model at 224 px (eval_shape only).
    cfg = configuration.load_config(helpers.ROOT / "configs" / "my_images.py")
    cfg.task.num_classes = 10
    helpers.build_without_data(cfg)
    model = experiment.build_model(cfg, tasks.build_task(cfg))
    params = models.abstract_variables(model, (1, 224, 224, 3))["params"]
    assert models.count_params(params) == expected
    assert set(params) == {"backbone", "dense_0", "dense_1", "head"}


@pytest.mark.parametrize(("pool", "width"), [("flatten", 8 * 8 * 64), ("avg", 64), ("max", 64)])
def test_pools_set_the_heads_input(pool, width):
    """cnn's (32, 64) blocks leave an 8x8x64 map of a 32x32 image: flatten feeds 4096 values, avg and max 64."""
    model = models.create_model("classifier_tiny", num_outputs=3, pool=pool)
    variables = models.abstract_variables(model, (2, 32, 32, 3))
    assert variables["params"]["dense_0"]["kernel"].shape == (width, 16)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert out.shape == (2, 3)


def test_pool_values():
    x = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
    np.testing.assert_array_equal(pool_features(x, "flatten"), x.reshape(2, 24))  # (H, W, C) order, Keras' Flatten.
    np.testing.assert_array_equal(pool_features(x, "avg"), x.mean(axis=(1, 2)))
    np.testing.assert_array_equal(pool_features(x, "max"), x[:, 1, 2])


def test_the_head_follows_the_course():
    """Linear Dense layers (Keras' default) with dropout between them: at eval the model is one affine map."""
    small = {"features": (4,)}
    model = models.create_model("classifier_tiny", num_outputs=3, backbone_kwargs=small, pool="avg", head=(5, 4))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    variables = model.init(jax.random.key(1), x)
    params = variables["params"]
    maps = models.create_backbone("cnn", **small).apply({"params": params["backbone"]}, x)
    y = maps[2].mean(axis=(1, 2))
    for name in ("dense_0", "dense_1", "head"):
        y = y @ params[name]["kernel"] + params[name]["bias"]
    np.testing.assert_allclose(model.apply(variables, x), y, rtol=1e-5, atol=1e-5)
    train_out = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(train_out, y)  # Dropout acts in training.


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool": "mean"}, "pool='mean' is not valid; choose one of: flatten, avg, max"),
        ({"activation": "swish"}, "activation='swish' is not valid"),
        ({"backbone": "lstm"}, "model 'lstm' has no feature maps"),
        ({"dropout_rate": 1.0}, "dropout_rate=1.0 is not valid"),
        ({"head": (8, 0)}, "head=(8, 0) is not valid"),
    ],
)
def test_bad_fields(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        models.create_model("classifier", num_outputs=3, **kwargs)


def _torch_vgg_tiny_features(path):
    """torchvision's own VGG `features` stack of vgg_tiny's column (conv, BN, ReLU, pool indices), saved."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file
    from torchvision.models.vgg import make_layers

    torch.manual_seed(0)
    features = make_layers([8, "M", 16, "M", 32, 32, "M"], batch_norm=True)
    with torch.no_grad():  # Non-trivial running statistics, so loading them is visible.
        for module in features:
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    save_file({f"features.{k}": v.numpy() for k, v in features.state_dict().items()}, str(path))


def _photo_folder(root):
    """An image_folder of two classes, crops of scikit-learn's two photos (train 8, val 4, test 4 per class)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4), ("test", 4)):
        for name, photo in zip(("china", "flower"), load_sample_images().images, strict=True):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                top, left = rng.integers(0, 300), rng.integers(0, 500)
                Image.fromarray(photo[top : top + 100, left : left + 120]).save(folder / f"{i}.jpg")
    return root


def test_my_images_with_a_pretrained_base_trains_only_the_new_head(tmp_path, capsys):
    """configs/my_images.py on a photo folder: init_from fills `backbone`, freeze keeps it, the head trains.

    The course's Model 1 at 32 px on vgg_tiny (2 steps); then jaxdl-predict names a class folder.
    """
    from PIL import Image
    from sklearn import datasets as sk_datasets

    from jaxdl import convert, predict

    path = tmp_path / "vgg_tiny.safetensors"
    _torch_vgg_tiny_features(path)
    cfg = helpers.config(
        "my_images",
        dataset__path=str(_photo_folder(tmp_path / "photos")),
        dataset__data_dir=str(tmp_path / "cache"),
        dataset__train_transforms=f"random_resized_crop(size=32)|random_flip()|rescale(scale={1 / 255})",
        dataset__eval_transforms=f"center_crop(size=32, fraction=1.0)|rescale(scale={1 / 255})",
        model__kwargs="{'backbone': 'vgg_tiny', 'head': (16, 8), 'image_size': 32}",
        init_from=str(path),
        transfer__freeze="^backbone/",
        training__batch_size=4,
        training__num_steps=2,
        training__eval_every_steps=0,
        parallel__num_devices=1,
    )
    results = train.train_and_evaluate(cfg, tmp_path / "run")
    assert results["final_step"] == 2 and np.isfinite(results["test"]["loss"])
    params, _ = helpers.saved_params(tmp_path / "run")
    cfg.task.num_classes = 2  # As the run counted the class folders.
    model = experiment.build_model(cfg, tasks.build_task(cfg))
    loaded = convert.from_torch(model, str(path), input_shape=(1, 32, 32, 3))
    assert set(loaded["params"]) == {"backbone"}  # The dense head has no torch tensors: it keeps its init.
    helpers.assert_trees_close(params["backbone"], loaded["params"]["backbone"], rtol=0, atol=0)
    init_rng = jax.random.split(jax.random.key(cfg.seed))[0]  # The trainer's init key.
    initial = jax.jit(train.Experiment(cfg).init_fn())(init_rng).params
    assert not np.allclose(
        loaded["params"]["backbone"]["features_0"]["kernel"], initial["backbone"]["features_0"]["kernel"]
    )
    for name in ("dense_0", "dense_1", "head"):
        assert not np.allclose(params[name]["kernel"], initial[name]["kernel"])  # The new head trained.
    china = tmp_path / "china.png"
    Image.fromarray(sk_datasets.load_sample_image("china.jpg")).save(china)
    capsys.readouterr()
    assert predict.predict_cli([f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'out'}", str(china)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {p["name"] for p in record["top"]} == {"china", "flower"}
