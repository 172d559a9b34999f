"""YOLOv8n detecting the circles, squares and triangles of the generated `shapes` images.

  jaxdl-train --config=configs/shapes_yolov8n.py --workdir=runs/shapes_yolov8n
  python experiments/show_detections.py --workdir runs/shapes_yolov8n

The full yolov8n (3.0 M parameters at 3 classes) from scratch at 64 x 64 px:
anchor points at strides 8, 16 and 32 (8 x 8, 4 x 4 and 2 x 2 cells). Its loss
is ultralytics' (task-aligned assigner, CIoU + DFL + BCE with gains 7.5, 1.5,
0.5); AdamW with a linear warmup and a cosine decay, as ultralytics' `auto`
optimizer picks for short runs; mosaic and flips for training. The best
checkpoint is the one with the highest validation mAP@[.5:.95].
"""

import ml_collections

from configs import base, shapes


def get_config() -> ml_collections.ConfigDict:
    """yolov8n at 64 px, 3 classes; AdamW 2e-3, warmup then cosine; batch 32, 40 epochs."""
    config = base.get_config()
    shapes.shapes_objects(config)
    config.dataset.max_boxes = 8  # A mosaic can hold more objects than one image's 4.
    config.dataset.train_transforms = f"rescale(scale={1 / 255})|mosaic(p=0.5)|random_flip()"
    config.model.name = "yolov8n"
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.weight_decay = 5e-4
    config.optimizer.grad_clip_norm = 10.0
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 100
    config.schedule.final_fraction = 0.01
    config.training.batch_size = 32
    config.training.num_epochs = 40.0
    config.training.eval_every_steps = 250
    config.training.log_every_steps = 50
    config.training.checkpoint_every_steps = 250
    return config
