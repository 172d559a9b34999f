"""YOLOv8n trained on your own Ultralytics-style dataset (a data.yaml with images/ and labels/).

  jaxdl-data check path/to/data.yaml --format=yolo
  jaxdl-train --config=configs/my_yolo.py --config.dataset.path=path/to/data.yaml --workdir=runs/my_yolo
  jaxdl-predict --workdir=runs/my_yolo photo.jpg

The model and training settings of configs/shapes_yolov8n.py at Ultralytics'
default size, 640 px: every image, whatever its size, is letterboxed to
640 x 640 (aspect kept, black padding; boxes follow). The classes are the
data.yaml's `names` (task.num_classes=0 takes their count); a data.yaml without
`val` gives dataset.val_fraction of train to validation, one without `test` is
tested on validation. The images are decoded once (EXIF orientation applied, as
RGB) into the data dir's cache; see jaxdl/data/disk.py. On a CPU, try
--config.dataset.train_transforms and eval_transforms with letterbox(size=320)
for a first run.
"""

import ml_collections

from configs import shapes_yolov8n

SIZE = 640


def get_config() -> ml_collections.ConfigDict:
    """yolov8n at 640 px on config.dataset.path (a data.yaml); classes from its names; AdamW, cosine; 100 epochs."""
    config = shapes_yolov8n.get_config()
    config.dataset.name = "yolo"
    config.dataset.path = ""  # Give it: --config.dataset.path=path/to/data.yaml
    config.dataset.input_key = "image"
    config.dataset.target_key = "classes"
    config.dataset.boxes_key = "boxes"
    config.dataset.box_valid_key = ""
    config.dataset.box_format = "xyxy"
    config.dataset.box_class_offset = 0
    config.dataset.max_boxes = 300  # As Ultralytics' max_det; a mosaic gathers the boxes of four images.
    config.dataset.cache_in_memory = False  # Photos of many sizes: read from the cache one by one.
    config.dataset.train_transforms = f"letterbox(size={SIZE})|rescale(scale={1 / 255})|mosaic(p=0.5)|random_flip()"
    config.dataset.eval_transforms = f"letterbox(size={SIZE})|rescale(scale={1 / 255})"
    config.task.num_classes = 0  # The data.yaml's names.
    config.training.batch_size = 16
    config.training.num_epochs = 100.0
    config.training.eval_every_steps = 500
    config.training.checkpoint_every_steps = 500
    return config
