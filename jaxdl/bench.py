"""`jaxdl-bench`: compile time, step time, examples/s, FLOPs, MFU and peak memory of a config's train step.

  jaxdl-bench --config=configs/digits_cnn.py [--steps=20] [--json=out.json] [--mock_data] [--config.key=value ...]

The step is the one `jaxdl-train` runs, built by `jaxdl.experiment.Experiment`.
One real batch of the training pipeline is held on device and fed again and
again (the synthetic input: right shapes, dtypes and valid targets, no input
cost); warm-up steps are not timed. Then the same step is fed by the real
pipeline (`train_loader` + `DeviceIterator`, as in training), so the two
examples/s side by side say whether the input is the bottleneck.

FLOPs come from XLA's cost analysis of the compiled step (forward, backward and
update; a multiply-add counts 2). MFU is achieved FLOP/s over the peak of the
devices: a datasheet table for common accelerators (PEAK_TFLOPS), a timed matmul
on a CPU. `config.profile_steps` writes a profiler trace of timed steps
(`jaxdl.runlog.StepProfiler`, as in `jaxdl-train`) and the step's optimised HLO
next to it, and prints the trace summed by kind of operation (`jaxdl.profiling`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import configuration, profiling, runlog
from jaxdl.cli import report
from jaxdl.errors import ConfigError, UserError
from jaxdl.experiment import Experiment

log = logging.getLogger(__name__)

# Dense (non-sparse) peak TFLOP/s per JAX device: (device_kind regex, bfloat16, float32, source).
# float32 is the TF32 tensor-core figure on Ampere and Hopper, since JAX's default matmul
# precision lets XLA use TF32 there; on TPUs a float32 matmul at default precision runs in
# bfloat16 passes, so both columns are the bfloat16 peak. Vendors quote "with sparsity"
# figures for Ampere and later: the dense figure is half. Sources:
# - H100 SXM / H100 PCIe: NVIDIA H100 Tensor Core GPU datasheet (BF16 1,979 / 1,513 sparse;
#   TF32 989 / 756 sparse).
# - H200 (SXM): NVIDIA H200 Tensor Core GPU datasheet (BF16 1,979, TF32 989, sparse).
# - A100 (SXM and PCIe): NVIDIA A100 Tensor Core GPU datasheet (BF16 312, TF32 156 dense).
# - L4: NVIDIA L4 Tensor Core GPU datasheet (BF16 242.5, TF32 120 sparse).
# - V100 SXM2: NVIDIA V100 datasheet (FP32 15.7; no bfloat16 tensor cores, so bfloat16 is
#   counted at the float32 rate).
# - TPU v3 (a JAX device is one of a chip's two cores: 123 / 2), v4 (275 per chip), v5e (197),
#   v5p (459), v6e Trillium (918): Google Cloud TPU system architecture pages.
PEAK_TFLOPS: tuple[tuple[str, float, float, str], ...] = (
    (r"H200", 989.5, 494.5, "NVIDIA H200 datasheet"),
    (r"H100.*PCIe", 756.5, 378.0, "NVIDIA H100 PCIe datasheet"),
    (r"H100", 989.5, 494.5, "NVIDIA H100 SXM datasheet"),
    (r"A100", 312.0, 156.0, "NVIDIA A100 datasheet"),
    (r"\bL4\b", 121.0, 60.0, "NVIDIA L4 datasheet"),
    (r"V100", 15.7, 15.7, "NVIDIA V100 SXM2 datasheet"),
    (r"TPU v3", 61.5, 61.5, "Google Cloud TPU v3 (per core)"),
    (r"TPU v4", 275.0, 275.0, "Google Cloud TPU v4"),
    (r"TPU v5 ?lite|TPU v5e", 197.0, 197.0, "Google Cloud TPU v5e"),
    (r"TPU v5p|TPU v5$", 459.0, 459.0, "Google Cloud TPU v5p"),
    (r"TPU v6", 918.0, 918.0, "Google Cloud TPU v6e"),
)


def table_peak(device_kind: str, dtype: str) -> tuple[float, str] | None:
    """(peak TFLOP/s of one device in `dtype`, its source) from PEAK_TFLOPS, or None for an unlisted device."""
    for pattern, bf16, fp32, source in PEAK_TFLOPS:
        if re.search(pattern, device_kind):
            return (bf16 if dtype == "bfloat16" else fp32), source
    return None


def measured_peak(dtype: str, size: int = 1024, repeats: int = 10) -> float:
    """TFLOP/s of the best of `repeats` timed size x size matmuls in `dtype` on the first device."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e12


def step_flops(compiled, num_devices: int = 1) -> float | None:
    """FLOPs of one run of a compiled step over its `num_devices` devices, from XLA's cost analysis.

    Both strategies compile one device's program (jit's SPMD partition, pmap's
    replica), so its count is one device's share; replicated work (the update of
    replicated params) is counted once per device. Older JAX returned a list with
    one dict per program, newer a dict: both are read. None where the backend gives no count.
    """
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # Best effort by JAX's own documentation: unimplemented on some backends.
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"]) * num_devices


def compiled_memory(compiled) -> int | None:
    """Bytes one device needs for a compiled step: arguments + outputs + temporaries - donated aliases."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # Unimplemented on some backends.
        return None
    if stats is None:
        return None
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    return int(total - stats.alias_size_in_bytes)


def device_peak_memory(devices: Sequence) -> int | None:
    """The largest `peak_bytes_in_use` of `devices` (GPU and TPU report it; CPUs do not)."""
    peaks = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # Not implemented by every backend.
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def benchmark(
    config: ml_collections.ConfigDict,
    *,
    steps: int = 20,
    warmup: int = 2,
    pipeline_steps: int = 20,
    workdir: Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """Times the config's train step on a held batch and on the real pipeline; returns every number.

    Args:
      config: the experiment config (built and checked by Experiment).
      steps: timed steps on the held batch (after `warmup` untimed ones).
      pipeline_steps: timed steps fed by the real input pipeline (0: skip).
      workdir: where config.profile_steps (numbered among the timed steps) writes its trace.
      progress: called with a short message before each phase.
    """
    if steps < 1 or warmup < 0 or pipeline_steps < 0:
        raise ConfigError(f"--steps={steps} must be >= 1, --warmup={warmup} and --pipeline_steps={pipeline_steps} >= 0")
    progress("building the experiment")
    run = Experiment(config)
    if runlog.profile_window(config.profile_steps, steps) is not None and workdir is None:
        raise ConfigError("config.profile_steps needs --workdir in jaxdl-bench: the trace is written there")
    profiler = runlog.StepProfiler(config.profile_steps, steps, Path(workdir or ".") / "profile")
    training = config.training
    init_rng, dropout_rng = run.rngs()
    devices = list(run.mesh.devices.flat)
    results: dict = {
        "model": config.model.name,
        "dtype": config.dtype,
        "batch_size": training.batch_size,
        "num_devices": len(devices),
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "steps": steps,
        "warmup_steps": warmup,
    }
    progress("initialising the state (compile + run)")
    start = time.perf_counter()
    state = jax.block_until_ready(run.fresh_state(init_rng))
    results["init_s"] = time.perf_counter() - start

    data = run.train_data()
    try:
        held = next(data)  # One real batch, kept on device: shapes, dtypes and targets of the task.
        progress("compiling the train step")
        start = time.perf_counter()
        lowered = run.train_step.lower(state, held, dropout_rng)
        results["lower_s"] = time.perf_counter() - start
        compiled = lowered.compile()
        results["compile_s"] = time.perf_counter() - start

        progress(f"timing {steps} steps on a held batch ({warmup} warm-up)")
        for _ in range(warmup):
            state, metrics = compiled(state, held, dropout_rng)
        jax.block_until_ready((state, metrics) if warmup else state)
        # A step's time is from the previous step's end to its own: step n+1 is dispatched before
        # waiting on step n, so the host's dispatch overlaps the device's work, as in training.
        # (All outputs of one execution are ready together: its metrics mark its end.)
        ends = [time.perf_counter()]
        pending = None
        with profiler:
            for step in range(1, steps + 1):
                profiler.before(step)
                state, metrics = compiled(state, held, dropout_rng)
                if pending is not None:
                    jax.block_until_ready(pending)
                    ends.append(time.perf_counter())
                pending = metrics
                profiler.after(step, state)
            jax.block_until_ready(pending)
            ends.append(time.perf_counter())
        times = list(np.diff(ends))
        if pipeline_steps:
            progress(f"timing {pipeline_steps} steps fed by the input pipeline")
            for _ in range(config.dataset.prefetch_batches):  # Drain what was prefetched while idle.
                state, metrics = compiled(state, next(data), dropout_rng)
            jax.block_until_ready(state)
            start = time.perf_counter()
            for _ in range(pipeline_steps):
                state, metrics = compiled(state, next(data), dropout_rng)
            jax.block_until_ready(state)
            pipeline_s = time.perf_counter() - start
    finally:
        data.close()

    median = statistics.median(times)
    results.update(
        step_ms_median=1e3 * median,
        step_ms_p10=1e3 * _percentile(times, 10),
        step_ms_p90=1e3 * _percentile(times, 90),
        examples_per_s=training.batch_size / median,
        pipeline_steps=pipeline_steps,
    )
    if pipeline_steps:
        results["pipeline_examples_per_s"] = pipeline_steps * training.batch_size / pipeline_s
        # Within 10% of the held batch's rate the input keeps up; timing noise on a shared machine is about that.
        slow = results["pipeline_examples_per_s"] < 0.9 * results["examples_per_s"]
        results["bottleneck"] = "input pipeline" if slow else "compute"
    results.update(_flops_and_mfu(compiled, median, config.dtype, devices, progress))
    peak = device_peak_memory(devices)
    if peak is not None:
        results["peak_memory_bytes"], results["memory_source"] = peak, "device memory_stats peak_bytes_in_use"
    else:
        results["peak_memory_bytes"] = compiled_memory(compiled)
        results["memory_source"] = "estimate: compiled step arguments + outputs + temporaries - donated, per device"
    if profiler.window:
        results["profile_dir"] = str(profiler.log_dir)
        hlo_text = compiled.as_text()
        (profiler.log_dir / "train_step.hlo.txt").write_text(hlo_text)  # The names the trace's operations carry.
        summary = profiling.summarize(profiler.log_dir, hlo_text)
        results["profile_ms"] = {f"{kind} / {phase}": ms for (kind, phase), ms in sorted(summary.ms.items())}
        results["profile_table"] = profiling.format_profile(summary, step_ms=results["step_ms_median"])
    return results


def _flops_and_mfu(compiled, step_s: float, dtype: str, devices: list, progress) -> dict:
    """FLOPs per step (all devices), achieved TFLOP/s, the peak and its source, and MFU."""
    flops = step_flops(compiled, len(devices))
    out: dict = {"flops_per_step": flops}
    out["tflops_per_s"] = flops / step_s / 1e12 if flops is not None else None
    if devices[0].platform == "cpu":
        progress(f"measuring the CPU's {dtype} matmul peak")
        # Simulated CPU devices share the host's cores: the peak is the host's, counted once.
        out["peak_tflops"] = measured_peak(dtype)
        out["peak_source"] = f"measured: {dtype} 1024x1024 matmul on this CPU"
    else:
        found = table_peak(devices[0].device_kind, dtype)
        if found is None:
            out["peak_tflops"], out["peak_source"] = None, f"'{devices[0].device_kind}' is not in PEAK_TFLOPS"
        else:
            out["peak_tflops"] = found[0] * len(devices)
            out["peak_source"] = f"{found[1]}, {dtype} dense x {len(devices)} device(s)"
    ok = out["tflops_per_s"] is not None and out["peak_tflops"]
    out["mfu"] = out["tflops_per_s"] / out["peak_tflops"] if ok else None
    return out


def _si(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def format_report(results: dict) -> str:
    """The results as a readable table."""
    r = results
    rows = [
        ("device", f"{r['num_devices']} x {r['device_kind']} ({r['platform']})"),
        ("model / dtype / batch", f"{r['model']} / {r['dtype']} / {r['batch_size']}"),
        ("init (compile + run)", f"{r['init_s']:.2f} s"),
        ("train step compile", f"{r['compile_s']:.2f} s (lower {r['lower_s']:.2f} s + XLA compile)"),
        (
            "step time",
            f"median {r['step_ms_median']:.2f} ms (p10 {r['step_ms_p10']:.2f}, p90 {r['step_ms_p90']:.2f}; "
            f"{r['steps']} steps after {r['warmup_steps']} warm-up)",
        ),
        ("examples/s, held batch", f"{r['examples_per_s']:,.1f}"),
    ]
    if r.get("pipeline_steps"):
        note = " (mock records)" if r.get("mock_data") else ""
        rows.append(
            (
                "examples/s, pipeline",
                f"{r['pipeline_examples_per_s']:,.1f}{note} over {r['pipeline_steps']} steps; "
                f"bottleneck: {r['bottleneck']}",
            )
        )
    rows += [
        ("FLOPs per step", f"{_si(r['flops_per_step'], 'FLOP')} (XLA cost analysis)"),
        ("achieved", _si(r["tflops_per_s"] and r["tflops_per_s"] * 1e12, "FLOP/s")),
        ("peak", f"{_si(r['peak_tflops'] and r['peak_tflops'] * 1e12, 'FLOP/s')} ({r['peak_source']})"),
        ("MFU", "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"),
        ("peak memory", f"{_si(r['peak_memory_bytes'], 'B')} ({r['memory_source']})"),
    ]
    if r.get("mock_data"):
        rows.append(("data", "tfds mock records (random values of the dataset's feature shapes)"))
    if r.get("profile_dir"):
        rows.append(("profile trace", f"{r['profile_dir']} (its steps were timed with the tracer on)"))
    width = max(len(name) for name, _ in rows)
    table = "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
    if r.get("profile_table"):
        table += "\n\nwhere the profiled steps' time went (ms per step, from the trace):\n" + r["profile_table"]
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxdl-bench",
        description="Time a jaxdl config's train step; any config key can be overridden as --config.key=value.",
    )
    parser.add_argument("--config", required=True, help="path of a config file defining get_config()")
    parser.add_argument("--steps", type=int, default=20, help="timed steps on a batch held on device")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling, before the timed ones")
    parser.add_argument("--pipeline_steps", type=int, default=20, help="timed steps fed by the real pipeline")
    parser.add_argument("--json", default="", help="also write every number to this file as JSON")
    parser.add_argument("--workdir", default="", help="where config.profile_steps writes its trace")
    parser.add_argument(
        "--mock_data",
        action="store_true",
        help="read tfds mock records of the dataset's shapes (for datasets not prepared here)",
    )
    return parser


def _mock_data(config: ml_collections.ConfigDict):
    """tfds mock records, enough for the train split's slice to fill two batches; read in this process."""
    import tensorflow_datasets as tfds

    # grain's worker processes would not see the mock, which lives in this process.
    config.dataset.worker_count = 0
    return tfds.testing.mock_data(num_examples=2 * config.training.batch_size + 16)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-bench; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    overrides = [a[len("--config.") :] for a in argv if a.startswith("--config.")]
    args = parser.parse_args([a for a in argv if not a.startswith("--config.")])
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    def progress(message: str) -> None:
        print(f"jaxdl-bench: {message} ...", file=sys.stderr, flush=True)

    try:
        config = configuration.load_config(args.config)
        configuration.apply_overrides(config, overrides)
        config.training.progress_bar = False
        context = _mock_data(config) if args.mock_data else contextlib.nullcontext()
        with context:
            results = benchmark(
                config,
                steps=args.steps,
                warmup=args.warmup,
                pipeline_steps=args.pipeline_steps,
                workdir=Path(args.workdir) if args.workdir else None,
                progress=progress,
            )
    except UserError as error:
        return report(parser.prog, error)
    results.update(config=args.config, mock_data=args.mock_data, overrides=overrides)
    print(format_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
