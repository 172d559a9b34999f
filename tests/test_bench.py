"""jaxdl-bench (step time, FLOPs, MFU, memory), config.profile_steps traces, and gpu_bench.sh at toy sizes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdl import bench, configuration, train
from jaxdl.errors import ConfigError
from tests import helpers

JSON_KEYS = {
    "compile_s",
    "init_s",
    "step_ms_median",
    "step_ms_p10",
    "step_ms_p90",
    "examples_per_s",
    "pipeline_examples_per_s",
    "bottleneck",
    "flops_per_step",
    "tflops_per_s",
    "peak_tflops",
    "peak_source",
    "mfu",
    "peak_memory_bytes",
    "memory_source",
}


def test_bench_on_digits_prints_mfu_and_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    config = helpers.ROOT / "configs" / "digits_cnn.py"
    args = ["--steps", "3", "--pipeline_steps", "3", "--json", str(out), f"--workdir={tmp_path}"]
    code = bench.main([f"--config={config}", *args, "--config.profile_steps=2,3"])
    assert code == 0
    assert len(list((tmp_path / "profile").rglob("*.xplane.pb"))) == 1  # The trace of timed steps 2 and 3.
    printed = capsys.readouterr().out
    assert "MFU" in printed and "FLOPs per step" in printed and "measured" in printed  # A CPU's peak is measured.
    # The profiled steps' time by kind of operation: digits_cnn's convolutions, forward and both gradients.
    assert "where the profiled steps' time went" in printed and (tmp_path / "profile" / "train_step.hlo.txt").exists()
    results = json.loads(out.read_text())
    assert {"conv forward / forward", "conv weight gradient / backward"} <= set(results["profile_ms"])
    assert JSON_KEYS <= set(results)
    assert results["batch_size"] == 64 and results["steps"] == 3
    # The derived numbers follow from the measured ones.
    assert results["examples_per_s"] == pytest.approx(64 / (results["step_ms_median"] / 1e3))
    assert results["step_ms_p10"] <= results["step_ms_median"] <= results["step_ms_p90"]
    achieved = results["flops_per_step"] / (results["step_ms_median"] / 1e3) / 1e12
    assert results["tflops_per_s"] == pytest.approx(achieved)
    assert results["mfu"] == pytest.approx(results["tflops_per_s"] / results["peak_tflops"])
    assert results["flops_per_step"] > 0 and results["peak_memory_bytes"] > 0


def test_dense_layer_step_flops_equal_the_closed_form():
    """A Dense layer's SGD step: forward x @ w (2BDK) and the weight gradient x^T @ g (2BDK).

    XLA counts a multiply-add as 2 FLOPs and the input needs no gradient, so the
    matmuls are 4BDK. The rest is elementwise, O(BK + DK): bias, error, square,
    mean, their gradients and the update, about 10 BK + 4 DK = 0.8M next to
    4BDK = 67M here. Over 8 devices each also updates the replicated params and
    all-reduces their gradient (about 3 DK each, 0.8M in all). So the count is within
    1.05x of the closed form, and never below it.
    """
    batch, d_in, d_out = 512, 256, 128
    tx = optax.sgd(0.1)

    def step(params, opt_state, x, y):
        def loss(p):
            return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = {"w": jnp.zeros((d_in, d_out)), "b": jnp.zeros((d_out,))}
    x, y = jnp.ones((batch, d_in)), jnp.ones((batch, d_out))
    closed_form = 4 * batch * d_in * d_out
    compiled = jax.jit(step).lower(params, tx.init(params), x, y).compile()
    assert 1.0 <= bench.step_flops(compiled) / closed_form <= 1.05
    # Over 8 devices (batch sharded, as the jit strategy does) XLA counts one device's share.
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    x, y = (jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, y))
    compiled = jax.jit(step).lower(params, tx.init(params), x, y).compile()
    assert 1.0 <= bench.step_flops(compiled, num_devices=8) / closed_form <= 1.05
    assert bench.step_flops(compiled) < closed_form / 7


def test_peak_table_picks_the_device_and_dtype():
    assert bench.table_peak("NVIDIA H100 80GB HBM3", "bfloat16") == (989.5, "NVIDIA H100 SXM datasheet")
    assert bench.table_peak("NVIDIA H100 PCIe", "bfloat16")[0] == 756.5
    assert bench.table_peak("NVIDIA H200", "float32")[0] == 494.5
    assert bench.table_peak("NVIDIA A100-SXM4-80GB", "float32")[0] == 156.0
    assert bench.table_peak("TPU v5 lite", "bfloat16")[0] == 197.0
    assert bench.table_peak("cpu", "float32") is None


def test_profile_steps_write_a_trace(tmp_path):
    cfg = helpers.tiny_cnn(training__num_steps=3, training__eval_every_steps=0)
    configuration.apply_overrides(cfg, ["profile_steps=2,3"])  # As written on the command line.
    assert cfg.profile_steps == (2, 3)
    train.train_and_evaluate(cfg, tmp_path)
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.parametrize(
    "value, message",
    [
        ("0,2", "numbered from 1"),
        ("-1,2", "numbered from 1"),
        ("3,2", "first step is after the last"),
        ("2,11", "has only 10 steps"),
        ("5", "give FIRST,LAST"),
        ("1,2,3", "give FIRST,LAST"),
        ("1.5,2", "give FIRST,LAST"),
        ("a,b", "expects tuple"),
    ],
)
def test_bad_profile_steps_is_a_one_line_config_error(value, message, tmp_path):
    cfg = helpers.tiny_cnn()  # 10 steps.
    with pytest.raises(ConfigError, match=message) as error:
        configuration.apply_overrides(cfg, [f"profile_steps={value}"])
        train.train_and_evaluate(cfg, tmp_path)
    assert "config.profile_steps" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "profile").exists()


@pytest.mark.slow
def test_gpu_bench_runs_at_toy_sizes_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "JAXDL_BENCH_OUT": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        ["bash", str(helpers.ROOT / "experiments" / "gpu_bench.sh"), "--toy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[1].split()[:4] == ["model", "dtype", "batch", "examples/s"]
    for row in ("resnet50 (resnet_tiny)", "vit_b_16 (vit_mini)", "convnext_tiny (convnext_mini)", "lstm", "digits"):
        (line,) = [line for line in lines if line.startswith(row)]
        assert "FAILED" not in line
    mfu = [float(line.split("%")[0].split()[-1]) for line in lines[2:5]]
    assert all(0 < value < 100 for value in mfu)
    assert np.isfinite(json.loads((tmp_path / "resnet50.json").read_text())["examples_per_s"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.profile_steps=2,3"], "needs --workdir"),
        (["--config.profile_steps=2,5", "--workdir=."], "has only 3 steps"),  # Numbered among the timed steps.
        (["--config.training.batch_size=0"], "config.training.batch_size"),
    ],
)
def test_bench_reports_bad_input_in_one_line(args, message, capsys):
    config = helpers.ROOT / "configs" / "digits_cnn.py"
    assert bench.main([f"--config={config}", "--steps", "3", *args]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("jaxdl-bench: error:") and message in line
