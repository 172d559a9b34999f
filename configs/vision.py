"""Dataset settings shared by the CIFAR-10 and ImageNet experiment configs (not an experiment).

Both read tfds datasets prepared as ArrayRecord (no download at run time):
`tfds build cifar10 --file_format=array_record` (or imagenet2012, whose archives
must be placed in tfds' manual dir first).
"""

import ml_collections

# Per-channel mean and std of the CIFAR-10 training images and of ImageNet, on the 0..1 scale.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cifar10(config: ml_collections.ConfigDict) -> None:
    """CIFAR-10 with the standard pad-4 random crop and flip; the last 5,000 train images validate."""
    normalize = f"rescale(scale={1 / 255})|normalize(mean={CIFAR10_MEAN}, std={CIFAR10_STD})"
    config.dataset.name = "cifar10"
    config.dataset.train_split = "train[:90%]"
    config.dataset.val_split = "train[90%:]"
    config.dataset.test_split = "test"
    config.dataset.train_transforms = f"{normalize}|random_crop(padding=4)|random_flip()"
    config.dataset.eval_transforms = normalize
    config.task.num_classes = 10


def imagenet(config: ml_collections.ConfigDict, size: int = 224) -> None:
    """ImageNet-1k: random-resized crop and flip for training, 0.875 centre crop for evaluation.

    1% of the train split validates (checkpoint selection); the official
    validation split is the test split.
    """
    normalize = f"rescale(scale={1 / 255})|normalize(mean={IMAGENET_MEAN}, std={IMAGENET_STD})"
    config.dataset.name = "imagenet2012"
    config.dataset.train_split = "train[:99%]"
    config.dataset.val_split = "train[99%:]"
    config.dataset.test_split = "validation"
    config.dataset.cache_in_memory = False  # 1.28M images of many sizes.
    config.dataset.worker_count = 8
    config.dataset.train_transforms = f"random_resized_crop(size={size})|random_flip()|{normalize}"
    config.dataset.eval_transforms = f"center_crop(size={size}, fraction=0.875)|{normalize}"
    config.task.num_classes = 1000
    config.training.eval_every_steps = 5000
    config.training.checkpoint_every_steps = 1000
    config.training.log_every_steps = 100


def timm_augment(config: ml_collections.ConfigDict, size: int = 224, erasing: float = 0.25) -> None:
    """The training transforms of the DeiT and ConvNeXt recipes (timm's `create_transform` with auto_augment).

    Random-resized crop, flip, RandAugment rand-m9-mstd0.5 (two ops, each run
    with probability 0.5, magnitude ~ N(9, 0.5), gaps filled with the ImageNet
    mean), normalisation, then random erasing with probability `erasing` in
    timm's 'pixel' mode (on normalised images, so after normalize).
    """
    fill = tuple(round(255 * m) for m in IMAGENET_MEAN)
    normalize = f"rescale(scale={1 / 255})|normalize(mean={IMAGENET_MEAN}, std={IMAGENET_STD})"
    config.dataset.train_transforms = (
        f"random_resized_crop(size={size})|random_flip()|rand_augment(n=2, m=9, mstd=0.5, p=0.5, fill={fill})|"
        f"{normalize}|random_erasing(p={erasing})"
    )


def epochs_to_fraction(epochs: float, total_epochs: float) -> float:
    """A number of epochs as a fraction of the run, for schedule keys given as fractions."""
    return epochs / total_epochs
