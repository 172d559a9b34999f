#!/usr/bin/env bash
# jaxdl's training speed on one accelerator, as one table: resnet50, vit_b_16 and convnext_tiny
# (bfloat16, batch 256, ImageNet shapes from tfds mock records), the LSTM benchmark, and the
# digits default trained end to end.
#
#   bash experiments/gpu_bench.sh          # one H100/H200: under 10 minutes
#   bash experiments/gpu_bench.sh --toy    # any CPU, about a minute: tiny variants at 32 px, float32, 2 steps
#                                          # (JAXDL_BENCH_TOY=1 does the same)
#
# Install on the GPU machine (JAX's CUDA wheels bring CUDA and cuDNN; use jax[cuda13] with CUDA 13
# drivers), then jaxdl; benchmark_lstm.py imports torch, whose CPU build is enough:
#   pip install -U "jax[cuda12]" && pip install -e . && pip install torch --index-url https://download.pytorch.org/whl/cpu
#
# Targets on one H100 (issue 11): resnet50 >= 3,000 images/s (NVIDIA's tuned PyTorch reaches
# about 2,500 on an A100) and vit_b_16 MFU >= 40%. Each model row is `jaxdl-bench` (jaxdl/bench.py):
# median step time on a batch held on device, FLOPs from XLA's cost analysis, MFU against the
# datasheet peak of the device (bench.PEAK_TFLOPS; a timed matmul on a CPU). The LSTM row's
# FLOPs are benchmark_lstm.py's matmul count. Per-row reports and JSON stay in $JAXDL_BENCH_OUT
# (default: a new temporary folder, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
TOY=${JAXDL_BENCH_TOY:-0}
for arg in "$@"; do
  case $arg in
    --toy) TOY=1 ;;
    *) echo "usage: bash experiments/gpu_bench.sh [--toy]" >&2; exit 2 ;;
  esac
done
OUT=${JAXDL_BENCH_OUT:-$(mktemp -d -t jaxdl-gpu-bench.XXXXXX)}
mkdir -p "$OUT"
FAILED=""

if [[ $TOY == 1 ]]; then
  # The same configs and code path at toy sizes: tiny variants, 32x32 crops, batch 8, 2 steps, one device.
  TOY_DATA=("--config.dataset.train_transforms=random_resized_crop(size=32)|random_flip()|rescale(scale=0.00392156862745098)"
            "--config.dataset.eval_transforms=center_crop(size=32, fraction=0.875)|rescale(scale=0.00392156862745098)"
            "--config.model.kwargs={'image_size': 32}" "--config.parallel.num_devices=1")
  BATCH=8
  DTYPE=float32  # XLA's CPU backend compiles bfloat16 steps about 3x slower (convnext_mini: 43 s vs 11 s).
  TIMING=(--steps 2 --warmup 1 --pipeline_steps 2)
  RESNET=(--config.model.name=resnet_tiny "${TOY_DATA[@]}")
  VIT=(--config.model.name=vit_mini "${TOY_DATA[@]}")
  CONVNEXT=(--config.model.name=convnext_mini "${TOY_DATA[@]}")
  LSTM=(--batch 4 --steps 8 --hidden 16 --repeats 1 --iters 1)
  DIGITS=(--config.training.num_steps=2 --config.training.eval_every_steps=0 --config.parallel.num_devices=1)
else
  BATCH=256
  DTYPE=bfloat16
  TIMING=(--steps 30 --warmup 3 --pipeline_steps 10)
  RESNET=()
  VIT=()
  CONVNEXT=()
  LSTM=(--repeats 3 --iters 10)  # The script's default shapes: B 64, T 128, 2 layers of 256.
  DIGITS=()
fi

run_bench() {  # name config [jaxdl-bench arguments...]: one model row.
  local name=$1 config=$2
  shift 2
  echo "== $name" >&2
  if ! "$PY" -m jaxdl.bench --config="$config" --mock_data --config.dtype=$DTYPE \
      --config.training.batch_size=$BATCH --json "$OUT/$name.json" "${TIMING[@]}" "$@" >"$OUT/$name.txt"; then
    FAILED="$FAILED $name"
  fi
}

run_bench resnet50 configs/imagenet_resnet50.py ${RESNET[@]+"${RESNET[@]}"}
# The recipe's repeated augmentation (3 copies per example) does not divide 256; it changes which
# images fill a batch, not what a step computes.
run_bench vit_b_16 configs/imagenet_vit_b_16.py --config.dataset.repeated_augmentations=1 ${VIT[@]+"${VIT[@]}"}
run_bench convnext_tiny configs/imagenet_convnext_tiny.py ${CONVNEXT[@]+"${CONVNEXT[@]}"}

echo "== lstm" >&2
if ! "$PY" experiments/benchmark_lstm.py --skip=flax,torch --out "$OUT/lstm.json" "${LSTM[@]}" >"$OUT/lstm.txt"; then
  FAILED="$FAILED lstm"
fi

echo "== digits end to end" >&2
start=$(date +%s.%N)
if "$PY" -m jaxdl.main --config=configs/digits_cnn.py --workdir="$OUT/digits" \
    --config.training.progress_bar=false ${DIGITS[@]+"${DIGITS[@]}"} >"$OUT/digits.txt" 2>"$OUT/digits.log"; then
  echo "{\"start\": $start, \"end\": $(date +%s.%N)}" >"$OUT/digits_wall.json"
else
  tail -3 "$OUT/digits.log" >&2
  FAILED="$FAILED digits"
fi

"$PY" - "$OUT" <<'EOF'
"""Prints the one table from the rows' JSON files."""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])


def load(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fmt(value, spec, scale=1.0):
    return "-" if value is None else format(value * scale, spec)


def size(value):
    """Bytes in GiB, or MiB below 1 GiB (the toy sizes)."""
    if value is None:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


rows = []
device = None
for name in ("resnet50", "vit_b_16", "convnext_tiny"):
    r = load(name)
    if r is None:
        rows.append((name, "-", "-", "-", "-", "-", "-", "-", "FAILED"))
        continue
    device = device or r
    memory = r["peak_memory_bytes"]
    note = "memory estimated" if memory is not None and r["memory_source"].startswith("estimate") else ""
    rows.append((
        f"{name} ({r['model']})", r["dtype"], str(r["batch_size"]), fmt(r["examples_per_s"], ",.1f"),
        fmt(r["step_ms_median"], ".2f"), fmt(r["tflops_per_s"], ".3f"), fmt(r["mfu"], ".1%"),
        size(memory), note,
    ))

lstm = load("lstm")
if lstm is None:
    rows.append(("lstm", "-", "-", "-", "-", "-", "-", "-", "FAILED"))
else:
    import jax

    from jaxdl import bench

    rate = lstm["frameworks"]["jaxdl"]["steps_per_s"]
    tflops = rate * lstm["gflop_per_step"] / 1e3
    kind = jax.devices()[0].device_kind
    if jax.devices()[0].platform == "cpu":
        peak = bench.measured_peak("float32")
    else:
        found = bench.table_peak(kind, "float32")
        peak = found[0] if found else None
    a = lstm["args"]
    rows.append((
        "lstm (benchmark_lstm.py)", "float32", str(a["batch"]), fmt(rate * a["batch"], ",.1f"), fmt(1e3 / rate, ".2f"),
        fmt(tflops, ".3f"), fmt(tflops / peak if peak else None, ".1%"), "-",
        f"T={a['steps']} H={a['hidden']} x{a['layers']}; matmul FLOPs",
    ))

results = out / "digits" / "results.json"
wall = load("digits_wall")
if wall is not None:
    wall["wall_s"] = wall["end"] - wall["start"]
if results.exists() and wall is not None:
    r = json.loads(results.read_text())
    config = json.loads((out / "digits" / "config.json").read_text())
    batch = config["training"]["batch_size"]
    rows.append((
        "digits cnn, end to end", config["dtype"], str(batch), fmt(r["final_step"] * batch / wall["wall_s"], ",.1f"),
        "-", "-", "-", "-", f"{wall['wall_s']:.1f} s, {r['final_step']} steps, test accuracy {r['test']['accuracy']:.4f}",
    ))
else:
    rows.append(("digits cnn, end to end", "-", "-", "-", "-", "-", "-", "-", "FAILED"))

header = ("model", "dtype", "batch", "examples/s", "step ms", "TFLOP/s", "MFU", "peak memory", "note")
widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
if device is not None:
    print(f"{device['num_devices']} x {device['device_kind']} ({device['platform']})")
for row in (header, *rows):
    print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
EOF
echo "reports and JSON: $OUT" >&2
if [[ -n $FAILED ]]; then
  echo "failed:$FAILED (see $OUT)" >&2
  exit 1
fi
