"""YOLOv8n on COCO 2017 with ultralytics' training recipe, for an accelerator and a prepared dataset.

  tfds build coco/2017 --file_format=array_record   # once, on a machine with network
  jaxdl-train --config=configs/coco_yolov8n.py --workdir=runs/coco_yolov8n

The hyperparameters are those of ultralytics 8.4.190's cfg/default.yaml for a
detection run: SGD with Nesterov momentum 0.937, learning rate 0.01 decaying to
0.01 x 0.01, weight decay 5e-4, 3 warmup epochs, loss gains box 7.5, cls 0.5,
dfl 1.5, letterboxed 640 px images, mosaic 1.0 and horizontal flips 0.5, NMS
at IoU 0.7 keeping 300 detections of score >= 0.001 for validation. The
nominal batch 64 of ultralytics is the global batch here (no accumulation).
Differences, said so that results are read right: the decay is a cosine, not
ultralytics' linear one; no HSV jitter, random affine or `close_mosaic`; tfds
numbers the 80 classes 0..79. Crowd annotations are kept: out of the loss (as
ultralytics leaves them out of its labels), ignore regions in the evaluation,
whose small / medium / large ranges read the annotations' areas as
pycocotools does (scaled by the letterbox; for the numbers on the original
images, score `jaxdl-eval --predictions=FILE`'s file with pycocotools).
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """yolov8n, COCO 2017 train / validation at 640 px, batch 64, 500 epochs, SGD 0.01."""
    config = base.get_config()
    config.dataset.name = "coco/2017"
    config.dataset.train_split = "train"
    config.dataset.val_split = "validation"
    config.dataset.test_split = "validation"  # COCO's test labels are not public.
    config.dataset.input_key = "image"
    config.dataset.target_key = "objects/label"
    config.dataset.target_kind = "objects"
    config.dataset.boxes_key = "objects/bbox"
    config.dataset.box_format = "tfds"
    config.dataset.box_crowd_key = "objects/is_crowd"
    config.dataset.box_area_key = "objects/area"
    config.dataset.max_boxes = 100
    config.dataset.cache_in_memory = False
    config.dataset.worker_count = 8
    size = 640
    config.dataset.train_transforms = (
        f"letterbox(size={size}, fill=114)|rescale(scale={1 / 255})|mosaic(p=1.0)|random_flip()"
    )
    config.dataset.eval_transforms = f"letterbox(size={size}, fill=114)|rescale(scale={1 / 255})"
    config.task.name = "detection"
    config.task.num_classes = 80
    config.model.name = "yolov8n"
    config.dtype = "bfloat16"
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.937
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = "cosine"
    config.schedule.final_fraction = 0.01
    config.schedule.warmup_steps = 3 * 1849  # 3 epochs of 118,287 images at batch 64.
    config.training.batch_size = 64
    config.training.num_epochs = 500.0
    config.training.eval_every_steps = 10 * 1849
    config.training.checkpoint_every_steps = 1849
    config.training.log_every_steps = 100
    return config
