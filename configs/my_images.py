"""Your own photos, one folder per class: the course's "Model 1" (VGG19 -> Flatten -> Dense 1024 -> Dense 512).

  jaxdl-data check PHOTOS --format=image_folder
  jaxdl-train --config=configs/my_images.py --workdir=runs/my_images --config.dataset.path=PHOTOS
  jaxdl-predict --workdir=runs/my_images photo.jpg

PHOTOS holds `train/<class>/<image>`, `val/<class>/...` and `test/<class>/...`
(torchvision's ImageFolder layout; see `jaxdl-data check`); the class folders
give the classes and their count (task.num_classes=0). Photos of any size
and shape are brought to 224x224: training takes a random-resized crop and a
flip, evaluation the central square of the shorter side, resized.

The model is the course's Model 1: VGG19 from a random init without its top,
the last map flattened, Dense 1024 and Dense 512 (Keras' linear `Dense()`, each
followed by dropout 0.5), and the output layer. For the "pre-trained base + new
dense head" variant add `--config.init_from=vgg19.safetensors` (torchvision's
state dict) and `--config.transfer.freeze='^backbone/'`; for another base,
`--config.model.kwargs.backbone=resnet50` (any name in
`jaxdl.models.list_backbones()`) and perhaps `--config.model.kwargs.pool=avg`.
"""

import ml_collections

from configs import base, vision

SIZE = 224


def get_config() -> ml_collections.ConfigDict:
    """Model 1 at 224 px on an image folder; Adam 1e-4, 20 epochs, the best checkpoint by validation accuracy."""
    config = base.get_config()
    config.model.name = "classifier"
    config.model.kwargs = ml_collections.ConfigDict(
        dict(
            backbone="vgg19",
            pool="flatten",
            head=(1024, 512),
            activation="linear",
            dropout_rate=0.5,
            image_size=SIZE,
        )
    )
    config.task.name = "classification"
    config.task.num_classes = 0  # 0: one class per class folder, counted when the run reads them.
    config.dataset.name = "image_folder"
    config.dataset.path = ""  # Required: the folder that holds train/, val/ and test/.
    config.dataset.cache_in_memory = False  # Photos of many sizes cannot be one array.
    normalize = f"rescale(scale={1 / 255})|normalize(mean={vision.IMAGENET_MEAN}, std={vision.IMAGENET_STD})"
    config.dataset.train_transforms = f"random_resized_crop(size={SIZE})|random_flip()|{normalize}"
    config.dataset.eval_transforms = f"center_crop(size={SIZE}, fraction=1.0)|{normalize}"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-4
    config.training.batch_size = 32
    config.training.num_epochs = 20.0
    config.training.eval_every_steps = 100
    config.training.checkpoint_every_steps = 100
    config.training.best_metric = "val/accuracy"
    return config
