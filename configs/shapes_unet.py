"""U-Net (Ronneberger et al. 2015) segmenting the generated `shapes` images.

  jaxdl-train --config=configs/shapes_unet.py --workdir=runs/shapes_unet
  python experiments/show_segmentation.py --workdir runs/shapes_unet

The paper's network at an eighth of its width (8 doubling to 64) and three
down-steps instead of four (64x64 images), with padded ("same") convolutions
so the output mask has the image's size, and BatchNorm for a fast, stable
start. The best checkpoint is the one with the highest validation mIoU.
"""

import ml_collections

from configs import base, shapes


def get_config() -> ml_collections.ConfigDict:
    """U-Net width 8, depth 3, same padding, BatchNorm; Adam 3e-3 with a cosine decay."""
    config = base.get_config()
    shapes.shapes(config)
    config.model.name = "unet"
    config.model.kwargs = ml_collections.ConfigDict(
        {"width": 8, "depth": 3, "padding": "same", "batch_norm": True, "image_size": 64}
    )
    config.optimizer.learning_rate = 3e-3
    config.schedule.name = "cosine"
    config.training.batch_size = 32
    config.training.num_epochs = 15.0
    config.training.eval_every_steps = 250
    config.training.log_every_steps = 50
    config.training.checkpoint_every_steps = 250
    return config
