"""Dataset settings of the segmentation and detection experiments on `shapes` (not an experiment).

`shapes` is generated in code (jaxdl/data/shapes.py): 64x64 RGB images with
textured backgrounds and 1 to 4 circles, squares and triangles; masks with
0 = background, 1 = circle, 2 = square, 3 = triangle; 2,000 / 200 / 200 images;
and the objects' boxes (at most 4 per image) with their classes.
"""

import ml_collections


def shapes(config: ml_collections.ConfigDict) -> None:
    """Segmentation of the shapes into 4 classes; flips for training; images scaled to 0..1."""
    config.dataset.name = "shapes"
    config.dataset.input_key = "image"
    config.dataset.target_key = "segmentation_mask"
    config.dataset.target_kind = "mask"
    config.dataset.split_sizes = (2000, 200, 200)
    config.dataset.train_transforms = f"rescale(scale={1 / 255})|random_flip()"
    config.dataset.eval_transforms = f"rescale(scale={1 / 255})"
    config.task.name = "segmentation"
    config.task.num_classes = 4


def shapes_objects(config: ml_collections.ConfigDict) -> None:
    """Detection of the circles, squares and triangles (classes 0, 1, 2); flips for training; images in 0..1."""
    shapes(config)
    config.dataset.target_key = "box_classes"
    config.dataset.target_kind = "objects"
    config.dataset.boxes_key = "boxes"
    config.dataset.box_valid_key = "box_valid"
    config.dataset.box_class_offset = 1  # The records number the classes from 1 (0 is the masks' background).
    config.dataset.max_boxes = 4
    config.task.name = "detection"
    config.task.num_classes = 3
