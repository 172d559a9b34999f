"""YOLOv8n train step at 640 px: jaxdl against ultralytics' own (PyTorch) in the same run.

    python experiments/benchmark_detection.py [--size 640] [--batch 8] [--steps 5] [--repeats 3]

jaxdl: configs/shapes_yolov8n.py with its images resized to --size, built as a
run builds it (jaxdl.experiment.Experiment); one batch of the real pipeline is
held on the device and the compiled train step (forward, ultralytics' loss,
backward, AdamW update) is timed after two warm-up steps.

ultralytics 8.4.190: `DetectionModel("yolov8n.yaml", nc=3)` in training mode on
the same images and boxes, `v8DetectionLoss`, backward and an AdamW step, with
torch using the same number of threads as XLA may (all cores). Both report the
median over --repeats rounds of --steps steps. Needs the test extras
(ultralytics); runs offline (YOLO_OFFLINE=1, settings in a temporary dir).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxdl import configuration  # noqa: E402
from jaxdl.experiment import Experiment  # noqa: E402


def _median_rate(step, steps: int, repeats: int) -> tuple[float, list[float]]:
    rates = []
    for _ in range(repeats):
        step(2)
        start = time.perf_counter()
        step(steps)
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates), rates


def time_jaxdl(size: int, batch: int, steps: int, repeats: int) -> tuple[dict, dict]:
    """The jaxdl step's timing, and the held batch (numpy) for the reference."""
    config = configuration.load_config(ROOT / "configs" / "shapes_yolov8n.py")
    config.training.batch_size = batch
    config.parallel.num_devices = 1
    config.dataset.eval_transforms = f"resize(size={size})|rescale(scale={1 / 255})"
    run = Experiment(config)
    rng = jax.random.key(config.seed)
    state = run.fresh_state(rng)
    host = next(iter(run.eval_batches(config.dataset.train_split)))
    held = jax.device_put({k: v for k, v in host.items() if k != "mask"})
    start = time.perf_counter()
    state, metrics = run.train_step(state, held, rng)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    box = {"state": state}

    def step(n):
        for _ in range(n):
            box["state"], out = run.train_step(box["state"], held, rng)
        jax.block_until_ready(out)

    median, rates = _median_rate(step, steps, repeats)
    result = {"ms_per_step": 1000 / median, "compile_and_first_step_s": compile_s, "all_rates": rates}
    return result, {k: np.asarray(v) for k, v in host.items()}


def time_ultralytics(batch_arrays: dict, steps: int, repeats: int) -> dict:
    """ultralytics' train step on the same images and boxes."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp())
    import torch
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG
    from ultralytics.utils.loss import v8DetectionLoss

    torch.set_num_threads(os.cpu_count() or 1)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    model.args = DEFAULT_CFG
    model.train()
    criterion = v8DetectionLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.from_numpy(np.ascontiguousarray(batch_arrays["input"].transpose(0, 3, 1, 2)))
    h, w = images.shape[2:]
    valid = batch_arrays["box_valid"] > 0
    index, slot = np.nonzero(valid)
    boxes = batch_arrays["boxes"][index, slot]
    xywh = np.stack(
        [(boxes[:, 0] + boxes[:, 2]) / 2 / w, (boxes[:, 1] + boxes[:, 3]) / 2 / h, (boxes[:, 2] - boxes[:, 0]) / w,
         (boxes[:, 3] - boxes[:, 1]) / h], axis=1)  # fmt: skip
    targets = {
        "batch_idx": torch.from_numpy(index.astype(np.float32)),
        "cls": torch.from_numpy(batch_arrays["target"][index, slot].astype(np.float32)[:, None]),
        "bboxes": torch.from_numpy(xywh.astype(np.float32)),
    }

    def one_step():
        optimizer.zero_grad()
        loss, _ = criterion(model(images), targets)
        loss.sum().backward()
        optimizer.step()

    start = time.perf_counter()
    one_step()
    first_s = time.perf_counter() - start

    def step(n):
        for _ in range(n):
            one_step()

    median, rates = _median_rate(step, steps, repeats)
    return {"ms_per_step": 1000 / median, "first_step_s": first_s, "all_rates": rates, "torch": torch.__version__}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    jaxdl_result, batch = time_jaxdl(args.size, args.batch, args.steps, args.repeats)
    reference = time_ultralytics(batch, args.steps, args.repeats)
    results = {
        "size": args.size,
        "batch": args.batch,
        "devices": str(jax.devices()),
        "jaxdl": jaxdl_result,
        "ultralytics": reference,
        "jaxdl_speedup": reference["ms_per_step"] / jaxdl_result["ms_per_step"],
    }
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
