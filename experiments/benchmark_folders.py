"""Image folders read from disk (jaxdl.data.disk): decode and cache time, steps/s and accuracy next to the builder.

  nice -n 10 python experiments/benchmark_folders.py [--images=10000] [--size=256] [--out=folders.json]

Prints (and writes to --out as JSON):
- decode and cache: `--images` JPEGs of size x size pixels (random crops of
  scikit-learn's two sample photos, quality 90, in an image_folder of two
  classes, written to a temporary folder first and not timed) decoded into the
  ArrayRecord cache by the first `prepare`; then a second `prepare` (scan and
  fingerprint only, nothing decoded) and one pass reading every cached record;
- steps/s of configs/digits_cnn.py's train step fed by the real pipeline
  (jaxdl.bench: the same step on a held batch, then `pipeline_steps` fed by
  grain) from the `digits` builder and from the same digits written as an
  image_folder (jaxdl.data.example_folders, channels=1);
- the test accuracy of configs/digits_cnn.py trained to the end (same seed) on
  the builder and on the image_folder (`--skip_accuracy` leaves it out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from jaxdl import bench, configuration, train  # noqa: E402
from jaxdl.data import disk, example_folders  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def write_jpegs(root: Path, count: int, size: int) -> Path:
    """root/train/{china,flower}/<i>.jpg: `count` random size x size crops (flipped at random) of the two photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(0)
    for i in range(count):
        c = i % 2
        photo = photos.images[c]
        y = int(rng.integers(0, photo.shape[0] - size + 1))
        x = int(rng.integers(0, photo.shape[1] - size + 1))
        crop = photo[y : y + size, x : x + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        folder = root / "train" / ("china", "flower")[c]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def _config(**overrides):
    config = configuration.load_config(ROOT / "configs" / "digits_cnn.py")
    config.training.progress_bar = False
    configuration.apply_overrides(config, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])
    return config


def decode_and_cache(tmp: Path, count: int, size: int) -> dict:
    start = time.perf_counter()
    root = write_jpegs(tmp / "jpegs", count, size)
    written_s = time.perf_counter() - start
    config = _config(dataset__name="image_folder", dataset__path=str(root), dataset__data_dir=str(tmp / "data"))
    start = time.perf_counter()
    prepared = disk.prepare(config.dataset)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    disk.prepare(config.dataset)
    second_s = time.perf_counter() - start
    config.dataset.cache_in_memory = False
    config.dataset.val_fraction = 0.0
    source = disk.open_split(config.dataset, "train")
    start = time.perf_counter()
    for i in range(len(source)):
        source[i]
    read_s = time.perf_counter() - start
    cache_bytes = sum(p.stat().st_size for p in prepared.directory.iterdir())
    jpeg_bytes = sum(p.stat().st_size for p in root.rglob("*.jpg"))
    return {
        "images": count,
        "size": size,
        "jpeg_mb": jpeg_bytes / 1e6,
        "write_jpegs_s": written_s,
        "first_prepare_s (decode + write cache)": first_s,
        "decode_images_per_s": count / first_s,
        "second_prepare_s (scan + fingerprint)": second_s,
        "read_all_cached_s": read_s,
        "cached_records_per_s": count / read_s,
        "cache_mb": cache_bytes / 1e6,
    }


def _digits_sources(tmp: Path, digits_root: Path):
    """(name, config) of digits_cnn on the builder and on the same digits as an image_folder."""
    for name, overrides in {
        "builder": {},
        "image_folder": dict(dataset__name="image_folder", dataset__path=str(digits_root), dataset__channels=1),
    }.items():
        yield name, _config(dataset__data_dir=str(tmp / "data"), **overrides)


def steps_per_second(tmp: Path, digits_root: Path, steps: int) -> dict:
    out = {}
    for name, config in _digits_sources(tmp, digits_root):
        results = bench.benchmark(config, steps=steps, pipeline_steps=steps)
        batch = config.training.batch_size
        out[name] = {
            "held_batch_steps_per_s": results["examples_per_s"] / batch,
            "pipeline_steps_per_s": results["pipeline_examples_per_s"] / batch,
        }
    return out


def accuracy(tmp: Path, digits_root: Path) -> dict:
    out = {}
    for name, config in _digits_sources(tmp, digits_root):
        start = time.perf_counter()
        results = train.train_and_evaluate(config, tmp / f"run_{name}")
        out[name] = {"test_accuracy": results["test"]["accuracy"], "wall_s": time.perf_counter() - start}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="0: skip the decode and cache measurement")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200, help="timed steps of each steps/s measurement")
    parser.add_argument("--skip_accuracy", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="jaxdl-folders-") as tmp:
        tmp = Path(tmp)
        if args.images > 0:
            results["decode_and_cache"] = decode_and_cache(tmp, args.images, args.size)
            print(json.dumps(results["decode_and_cache"], indent=2), flush=True)
        digits_root = example_folders.write_digits_image_folder(tmp)
        results["steps_per_s"] = steps_per_second(tmp, digits_root, args.steps)
        print(json.dumps(results["steps_per_s"], indent=2), flush=True)
        if not args.skip_accuracy:
            results["digits_cnn"] = accuracy(tmp, digits_root)
            print(json.dumps(results["digits_cnn"], indent=2), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
