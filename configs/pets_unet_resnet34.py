"""U-Net with a ResNet-34 encoder on the Oxford-IIIT Pet segmentation masks (pet vs background).

  tfds build oxford_iiit_pet --file_format=array_record   # where there is network, once
  jaxdl-train --config=configs/pets_unet_resnet34.py --workdir=runs/pets \
      --config.dataset.data_dir=~/tensorflow_datasets

The trimaps are 1 = pet, 2 = background, 3 = border; `map_mask` makes them
1 = pet, 0 = background and leaves the uncertain border unlabelled (the ignore
id), the usual binary evaluation. Images of many sizes are resized to 256 and
cropped at random to 224 for training, resized to 224 for evaluation. 10% of
the training split validates; the official test split is the test split.
Start from ImageNet weights with --config.init_from=<smp.Unet resnet34 state dict>.
"""

import ml_collections

from configs import base, vision


def get_config() -> ml_collections.ConfigDict:
    """unet_resnet34 at 224 px; Adam 1e-4 (as for a pre-trained encoder), 40 epochs."""
    config = base.get_config()
    normalize = f"rescale(scale={1 / 255})|normalize(mean={vision.IMAGENET_MEAN}, std={vision.IMAGENET_STD})"
    trimap = "map_mask(ids={1: 1, 2: 0, 3: 255})"
    config.dataset.name = "oxford_iiit_pet"
    config.dataset.train_split = "train[:90%]"
    config.dataset.val_split = "train[90%:]"
    config.dataset.test_split = "test"
    config.dataset.input_key = "image"
    config.dataset.target_key = "segmentation_mask"
    config.dataset.target_kind = "mask"
    config.dataset.cache_in_memory = False  # Images of many sizes.
    config.dataset.train_transforms = (
        f"random_resized_crop(size=224, scale=(0.5, 1.0))|random_flip()|{trimap}|{normalize}"
    )
    config.dataset.eval_transforms = f"resize(size=224)|{trimap}|{normalize}"
    config.task.name = "segmentation"
    config.task.num_classes = 2
    config.model.name = "unet_resnet34"
    config.model.kwargs = ml_collections.ConfigDict({"image_size": 224})
    config.optimizer.learning_rate = 1e-4
    config.training.batch_size = 16
    config.training.num_epochs = 40.0
    config.training.eval_every_steps = 500
    config.training.checkpoint_every_steps = 500
    config.training.log_every_steps = 50
    return config
