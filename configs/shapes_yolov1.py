"""YOLOv1 (Redmon et al. 2016) on the generated `shapes` images, beside configs/shapes_yolov8n.py.

  jaxdl-train --config=configs/shapes_yolov1.py --workdir=runs/shapes_yolov1

The paper's output and loss: S x S cells (S = 4 here, 16 px each), B = 2
boxes per cell with a confidence each, C class probabilities per cell, and the
sum-squared error with lambda_coord = 5, lambda_noobj = 0.5 and square roots
of width and height, the predictor with the highest IoU responsible. The
paper's 24-layer network is built for 448 px; at 64 px the trunk is resnet18
at half width and with three stages (32 to 128 channels), whose stride-16 map
is the 4 x 4 grid, and the paper's two fully connected layers become the same
two layers applied to every cell (1 x 1 convolutions, `head="conv"`). With the
paper's fully connected head on the stride-32 map (`head="fc"`) the model
overfits these 2,000 images: 20 epochs gave a test mAP@.5 of 0.03.
"""

import ml_collections

from configs import base, shapes


def get_config() -> ml_collections.ConfigDict:
    """yolov1, 4 x 4 grid on a 3-stage half-width resnet18 at 64 px; Adam 3e-3, cosine; batch 32, 60 epochs."""
    config = base.get_config()
    shapes.shapes_objects(config)
    config.task.head = "yolov1"
    config.task.iou_threshold = 0.5
    config.model.name = "yolov1"
    config.model.kwargs = ml_collections.ConfigDict(
        {
            "backbone": "resnet18",
            "backbone_kwargs": {"width": 32, "stage_sizes": (2, 2, 2)},
            "grid_size": 4,
            "image_size": 64,
            "head": "conv",
            "hidden_features": 256,
            "dropout_rate": 0.1,
        }
    )
    config.optimizer.learning_rate = 3e-3
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 100
    config.training.batch_size = 32
    config.training.num_epochs = 60.0
    config.training.eval_every_steps = 500
    config.training.log_every_steps = 50
    config.training.checkpoint_every_steps = 250
    return config
