"""A PNG grid of test images, their true masks and a trained segmentation workdir's predictions.

    python experiments/show_segmentation.py --workdir runs/shapes_unet [--num 8] [--out grid.png]

Rows are test images (the first --num of the test split, after the eval
transforms); columns are the image, the true mask and the predicted mask, in
the same colours per class; unlabelled pixels (the ignore id) are white. The
title of each prediction gives that image's pixel accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # File-only backend: runs on headless machines.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxdl import display  # noqa: E402
from jaxdl.errors import UserError  # noqa: E402
from jaxdl.tasks import Segmentation  # noqa: E402
from jaxdl.trained import TrainedRun  # noqa: E402


def _colour(mask: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    colours = display.palette(num_classes)[np.where(mask == ignore_index, 0, mask)]
    colours[mask == ignore_index] = 255
    return colours


def show(workdir: Path, num: int, out: Path) -> Path:
    """Writes the grid of `num` test images of `workdir` to `out`; returns `out`."""
    run = TrainedRun.open(workdir, task_type=Segmentation)
    rows = []
    for batch in run.eval_batches():
        logits = np.asarray(run.outputs(batch["input"]))
        for i in np.flatnonzero(batch["mask"]):
            rows.append((batch["input"][i], np.asarray(batch["target"][i]), np.argmax(logits[i], axis=-1)))
        if len(rows) >= num:
            break
    rows = rows[:num]
    k, ignore = run.task.num_classes, run.task.ignore_index
    figure, axes = plt.subplots(len(rows), 3, figsize=(6, 2 * len(rows)), squeeze=False)
    for r, (image, truth, predicted) in enumerate(rows):
        labelled = truth != ignore
        accuracy = float(np.mean(predicted[labelled] == truth[labelled])) if labelled.any() else float("nan")
        panels = [(display.display_image(image), "image"), (_colour(truth, k, ignore), "truth")]
        panels.append((_colour(predicted, k, ignore), f"prediction ({accuracy:.1%})"))
        for c, (panel, title) in enumerate(panels):
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].axis("off")
    figure.suptitle(f"{workdir.name}: {run.config.model.name}, step {run.step}", fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--num", type=int, default=8, help="test images shown")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default WORKDIR/segmentation.png)")
    args = parser.parse_args(argv)
    try:
        print(show(args.workdir, args.num, args.out or args.workdir / "segmentation.png"))
    except UserError as error:
        raise SystemExit(f"show_segmentation.py: error: {error}") from None


if __name__ == "__main__":
    main()
