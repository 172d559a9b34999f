"""A PNG grid of test images with their true boxes and a trained detection workdir's detections.

    python experiments/show_detections.py --workdir runs/shapes_yolov8n [--num 12] [--score 0.25] [--out grid.png]

Each panel is a test image (the first --num of the test split, after the eval
transforms) with its objects as dashed white boxes and the detections scoring
at least --score as solid boxes in one colour per class, labelled with class
and score. The title of each panel counts the objects, the detections and how
many objects a detection of their class covers at IoU >= 0.5.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # File-only backend: runs on headless machines.
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxdl import display  # noqa: E402
from jaxdl.errors import UserError  # noqa: E402
from jaxdl.tasks import Detection  # noqa: E402
from jaxdl.trained import TrainedRun  # noqa: E402


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [N, 4] and b [M, 4] (x0, y0, x1, y1)."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], -1), np.prod(b[:, 2:] - b[:, :2], -1)
    return overlap / np.maximum(area_a[:, None] + area_b[None] - overlap, 1e-12)


def show(workdir: Path, num: int, score: float, out: Path) -> Path:
    """Writes the grid of `num` test images of `workdir` to `out`; returns `out`."""
    run = TrainedRun.open(workdir, task_type=Detection)
    panels = []
    for batch in run.eval_batches():
        found = run.task.detections(run.task.transform_outputs(run.outputs(batch["input"]), batch["input"]))
        found = {k: np.asarray(v) for k, v in found.items()}
        for i in np.flatnonzero(batch["mask"]):
            valid = np.asarray(batch["box_valid"][i]) > 0
            keep = found["valid"][i] & (found["scores"][i] >= score)
            panels.append(
                (
                    batch["input"][i],
                    (np.asarray(batch["boxes"][i])[valid], np.asarray(batch["target"][i])[valid]),
                    (found["boxes"][i][keep], found["classes"][i][keep], found["scores"][i][keep]),
                )
            )
        if len(panels) >= num:
            break
    panels = panels[:num]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    colours = display.palette(run.task.num_classes + 1)[1:] / 255
    figure, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, (true_boxes, true_classes), (boxes, classes, scores)) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(display.display_image(image), interpolation="nearest")
        for x0, y0, x1, y1 in true_boxes:
            ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", ls="--", lw=1))
        for (x0, y0, x1, y1), c, s in zip(boxes, classes, scores, strict=True):
            ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colours[c], lw=1.5))
            ax.text(x0, y0, f"{display.label(c, run.class_names)} {s:.2f}", color=colours[c], fontsize=6, va="bottom")
        hits = 0
        if len(true_boxes) and len(boxes):
            same = true_classes[:, None] == classes[None, :]
            hits = int(np.sum(np.any((_iou(true_boxes, boxes) >= 0.5) & same, axis=1)))
        ax.set_title(f"{len(true_boxes)} objects, {len(boxes)} found, {hits} hit", fontsize=8)
    figure.suptitle(f"{workdir.name}: {run.config.model.name}, step {run.step}, score >= {score}", fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--num", type=int, default=12, help="test images shown")
    parser.add_argument("--score", type=float, default=0.25, help="lowest score of a drawn detection")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default WORKDIR/detections.png)")
    args = parser.parse_args(argv)
    try:
        print(show(args.workdir, args.num, args.score, args.out or args.workdir / "detections.png"))
    except UserError as error:
        raise SystemExit(f"show_detections.py: error: {error}") from None


if __name__ == "__main__":
    main()
