"""Datasets (tfds builders and sources), grain pipelines and augmentations."""
