"""jaxdl.profiling: a profiler trace summed by kind of XLA operation (what jaxdl-bench prints with profile_steps)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from jaxdl import profiling
from jaxdl.errors import UserError


def _conv_relu_loss(x, w, v):
    y = jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return jnp.sum((y.reshape(y.shape[0], -1) @ v) ** 2)


@pytest.fixture(scope="module")
def compiled_grad():
    x = jnp.ones((4, 8, 8, 3))
    w = jnp.full((3, 3, 3, 5), 0.1)
    v = jnp.full((8 * 8 * 5, 2), 0.01)
    grad = jax.jit(jax.grad(_conv_relu_loss, argnums=(0, 1, 2)))
    return grad.lower(x, w, v).compile(), (x, w, v)


def test_the_three_convolutions_of_a_gradient_are_told_apart(compiled_grad):
    compiled, _ = compiled_grad
    ops = profiling.classify(compiled.as_text()).values()
    kinds = [(op.kind, op.phase) for op in ops if op.kind.startswith("conv") and op.kind != "conv layout copies"]
    # The forward conv, its transpose for the input gradient, and XLA's weight-gradient conv (no op name).
    assert sorted(kinds) == [
        ("conv forward", "forward"),
        ("conv input gradient", "backward"),
        ("conv weight gradient", "backward"),
    ]
    assert ("matmul", "forward") in {(op.kind, op.phase) for op in ops}
    assert ("matmul", "backward") in {(op.kind, op.phase) for op in ops}


def test_a_fusion_takes_the_kind_of_what_it_fuses():
    hlo = """HloModule jit_f, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%fused_computation (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  %transpose.1 = f32[4]{0} transpose(%param_0), dimensions={0}
  ROOT %copy.1 = f32[4]{0} copy(%transpose.1)
}

%fused_computation.1 (param_0.1: f32[4]) -> f32[4] {
  %param_0.1 = f32[4]{0} parameter(0)
  ROOT %exp.1 = f32[4]{0} exponential(%param_0.1), metadata={op_name="jit(f)/jvp(g)/exp"}
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %copy_fusion = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_computation
  %cf2 = f32[1,2,2,1]{3,2,1,0} fusion(%x), kind=kLoop, calls=%fused_computation
  %w = f32[3,3,1,1]{3,2,1,0} parameter(1)
  %conv = f32[1,2,2,1]{3,2,1,0} convolution(%cf2, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  ROOT %exp_fusion = f32[4]{0} fusion(%copy_fusion), kind=kLoop, calls=%fused_computation.1
}
"""
    ops = profiling.classify(hlo)
    assert ops["copy_fusion"] == profiling.Op("data movement", "other", "")
    assert ops["exp_fusion"] == profiling.Op("elementwise", "forward", "jit(f)/jvp(g)/exp")
    # A convolution with no op name is XLA's rewritten dW; the unnamed copy feeding it is its layout copy.
    assert ops["conv"] == profiling.Op("conv weight gradient", "backward", "")
    assert ops["cf2"] == profiling.Op("conv layout copies", "other", "")


def test_a_traced_step_is_summed_per_execution(compiled_grad, tmp_path):
    compiled, args = compiled_grad
    jax.block_until_ready(compiled(*args))
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(3):
            jax.block_until_ready(compiled(*args))
    summary = profiling.summarize(tmp_path, compiled.as_text())
    assert summary.steps == 3  # Each call blocked, so the trace holds three whole executions.
    assert {kind for kind, _ in summary.ms} >= {"conv forward", "conv input gradient", "conv weight gradient"}
    assert summary.total_ms > 0 and all(ms >= 0 for ms in summary.ms.values())
    assert sum(t for *_, t in summary.top) <= summary.total_ms * (1 + 1e-9)  # The heaviest ops are among all.
    table = profiling.format_profile(summary, step_ms=1.0)
    assert "conv weight gradient" in table and "sum of operations" in table


def test_executions_caught_in_part_are_left_out(monkeypatch, tmp_path):
    (tmp_path / "a.xplane.pb").write_bytes(b"")
    events = [
        ("jit_f", "1", "exp_fusion", 2.0),  # Run 1 was already running when the trace started: one op only.
        ("jit_f", "2", "copy_fusion", 1.0),
        ("jit_f", "2", "exp_fusion", 3.0),
        ("jit_g", "3", "other_op", 100.0),  # Another program: not counted.
        ("jit_f", "4", "copy_fusion", 5.0),
        ("jit_f", "4", "exp_fusion", 7.0),
    ]
    monkeypatch.setattr(profiling, "_events", lambda trace: iter(events))
    hlo = "HloModule jit_f\n\nENTRY %main (x: f32[4]) -> f32[4] {\n  %copy_fusion = f32[4]{0} copy(%x)\n}\n"
    summary = profiling.summarize(tmp_path, hlo)
    assert summary.steps == 2
    assert summary.ms == {("data movement", "other"): 3.0, ("other", "other"): 5.0}
    assert [(name, t) for name, _, _, t in summary.top] == [("exp_fusion", 5.0), ("copy_fusion", 3.0)]


def test_bad_input_is_one_line(tmp_path):
    hlo = "HloModule jit_f\n"
    with pytest.raises(UserError, match="no profiler trace"):
        profiling.summarize(tmp_path, hlo)
    with pytest.raises(UserError, match="HloModule"):
        profiling.summarize(tmp_path, "not hlo")
    with jax.profiler.trace(str(tmp_path)):
        jax.block_until_ready(jax.jit(jnp.sin)(jnp.ones(3)))
    with pytest.raises(UserError, match="holds no operation of the module jit_f"):
        profiling.summarize(tmp_path, hlo)
