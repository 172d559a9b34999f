"""A U-Net trained on your own images with mask PNGs (PATH/<split>/images/* and PATH/<split>/masks/*).

  jaxdl-data check path/to/folder --format=mask_folder
  jaxdl-train --config=configs/my_masks.py --config.dataset.path=path/to/folder --workdir=runs/my_masks
  jaxdl-predict --workdir=runs/my_masks photo.jpg

The model of configs/shapes_unet.py at twice its width and one more level, at
256 x 256 px: every image and its mask are resized to 256 x 256 (masks by
nearest neighbour). A mask holds one class id per pixel; 0/255 masks need
--config.dataset.mask_values=255:1, colour masks
--config.dataset.palette='#000000:0,#ff0000:1'. task.num_classes=0 takes the
largest id found in the masks + 1 (255, dataset.ignore_index, marks unlabelled
pixels and is not a class). A split without val gives dataset.val_fraction of
train to validation. See jaxdl/data/disk.py.
"""

import ml_collections

from configs import shapes_unet

SIZE = 256


def get_config() -> ml_collections.ConfigDict:
    """U-Net width 16, depth 4, at 256 px on config.dataset.path; Adam 3e-3 with a cosine decay; 50 epochs."""
    config = shapes_unet.get_config()
    config.dataset.name = "mask_folder"
    config.dataset.path = ""  # Give it: --config.dataset.path=path/to/folder
    config.dataset.input_key = "image"
    config.dataset.target_key = "mask"
    config.dataset.target_kind = "mask"
    config.dataset.cache_in_memory = False  # Photos of many sizes: read from the cache one by one.
    config.dataset.train_transforms = f"resize(size={SIZE})|rescale(scale={1 / 255})|random_flip()"
    config.dataset.eval_transforms = f"resize(size={SIZE})|rescale(scale={1 / 255})"
    config.model.kwargs = ml_collections.ConfigDict(
        {"width": 16, "depth": 4, "padding": "same", "batch_norm": True, "image_size": SIZE}
    )
    config.task.num_classes = 0  # The masks' largest id + 1.
    config.training.batch_size = 16
    config.training.num_epochs = 50.0
    config.training.eval_every_steps = 500
    config.training.checkpoint_every_steps = 500
    return config
