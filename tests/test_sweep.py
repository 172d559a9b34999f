"""Sweeps: trial helpers, names, bad inputs, a parallel digits sweep killed and resumed, its report."""

import copy
import csv
import json
import math
from pathlib import Path

import pytest

from jaxdl import configuration, sweeps
from jaxdl.errors import ConfigError
from jaxdl.sweeps import local
from jaxdl.sweeps.cli import sweep_cli
from jaxdl.sweeps.trials import MAX_NAME_LENGTH, Sweep, name_trials, override_text, trial_name
from tests import helpers

DIGITS = str(helpers.ROOT / "configs" / "digits_cnn.py")
# Four steps a trial, evaluated and checkpointed every two: a kill at step 3 leaves a checkpoint to resume.
TINY = [f"--config.{k.replace('__', '.')}={v}" for k, v in helpers.TINY_CNN.items()] + [
    "--config.training.num_steps=4",
    "--config.training.eval_every_steps=2",
    "--config.training.checkpoint_every_steps=2",
    "--config.training.log_every_steps=2",
    "--config.training.progress_bar=false",
]


def sweep_file(tmp_path: Path, body: str, name: str = "sweep.py") -> Path:
    path = tmp_path / name
    path.write_text(f"from jaxdl import sweeps\n\n\ndef get_sweep():\n    return {body}\n")
    return path


def test_product_zip_sum():
    lrs, seeds = sweeps.sweep("optimizer.learning_rate", [0.1, 0.01]), sweeps.sweep("seed", [0, 1])
    assert sweeps.product(lrs, seeds) == [
        {"optimizer.learning_rate": 0.1, "seed": 0},
        {"optimizer.learning_rate": 0.1, "seed": 1},
        {"optimizer.learning_rate": 0.01, "seed": 0},
        {"optimizer.learning_rate": 0.01, "seed": 1},
    ]
    assert sweeps.zip(lrs, seeds) == [
        {"optimizer.learning_rate": 0.1, "seed": 0},
        {"optimizer.learning_rate": 0.01, "seed": 1},
    ]
    assert sweeps.sum(lrs, seeds) == lrs + seeds
    assert sweeps.product(sweeps.fixed({"seed": 3}), lrs) == [{"seed": 3, **lr} for lr in lrs]
    with pytest.raises(ConfigError, match="same length"):
        sweeps.zip(lrs, sweeps.sweep("seed", [0, 1, 2]))


def test_random_is_seeded_and_log_uniform_stays_within_bounds():
    space = {"optimizer.learning_rate": sweeps.loguniform(1e-5, 1e-1), "seed": sweeps.choice([0, 1, 2])}
    trials = sweeps.random(200, space, seed=7)
    assert trials == sweeps.random(200, space, seed=7)
    assert trials != sweeps.random(200, space, seed=8)
    rates = [t["optimizer.learning_rate"] for t in trials]
    assert all(1e-5 <= r <= 1e-1 for r in rates)
    # Log-uniform: each of the four decades gets about a quarter of the draws.
    decades = [sum(10**e <= r < 10 ** (e + 1) for r in rates) for e in range(-5, -1)]
    assert min(decades) > 30, decades
    assert {t["seed"] for t in trials} == {0, 1, 2}
    assert all(float(f"{r:.4g}") == r for r in rates)  # Four significant digits: short trial names.
    # A key added to the space leaves the others' draws as they were.
    wider = sweeps.random(200, {**space, "training.weight": sweeps.uniform(0.0, 1.0)}, seed=7)
    assert [{k: t[k] for k in space} for t in wider] == trials
    with pytest.raises(ConfigError, match="loguniform"):
        sweeps.loguniform(0.0, 1.0)


def test_trial_names_are_readable_safe_and_unique():
    assert trial_name({"optimizer.learning_rate": 0.01, "seed": 0}) == "optimizer.learning_rate=0.01,seed=0"
    assert trial_name({"model.kwargs.features": [4, 8]}) == "model.kwargs.features=_4,8_"
    assert trial_name({}) == "default"
    long = {f"model.kwargs.field_{i}": 0.001 for i in range(8)}
    assert len(trial_name(long)) == MAX_NAME_LENGTH and trial_name(long) != trial_name({**long, "seed": 1})
    named = name_trials([{"a b": 1}, {"a_b": 1}, {"x": "a/b"}])
    assert len({t.name for t in named}) == 3 and all("/" not in t.name and " " not in t.name for t in named)
    # Names too long in full drop the keys' dotted prefixes, for every trial of the sweep.
    grid = sweeps.product(
        sweeps.sweep("training.num_epochs", [20.0]),
        sweeps.sweep("optimizer.learning_rate", [0.01]),
        sweeps.sweep("model.kwargs.hidden_size", [16, 32]),
        sweeps.sweep("model.kwargs.num_layers", [1, 2]),
    )
    assert name_trials(grid)[0].name == "num_epochs=20.0,learning_rate=0.01,hidden_size=16,num_layers=1"
    with pytest.raises(ConfigError, match="trials 0 and 1 have the same overrides"):
        name_trials([{"seed": 0, "a": 1}, {"a": 1, "seed": 0}])


def test_override_text_reads_back_to_the_same_value():
    config = configuration.load_config(DIGITS)
    values = {"optimizer.learning_rate": 1e-05, "seed": 3, "optimizer.name": "sgd", "training.progress_bar": False}
    values["dataset.train_transforms"] = "rescale(scale=0.5)"
    configuration.apply_overrides(config, [f"{k}={override_text(v)}" for k, v in values.items()])
    for key, value in values.items():
        node = config
        for part in key.split("."):
            node = node[part]
        assert node == value


def one_line_error(capsys, argv: list[str], *expected: str) -> None:
    assert sweep_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jaxdl-sweep: error: "), err
    for text in expected:
        assert text in err, err


def test_bad_inputs_are_one_line(tmp_path, capsys):
    start = ["--config", DIGITS, "--workdir", str(tmp_path / "s")]
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    one_line_error(capsys, [*start, "--sweep", str(broken)], "broken.py", "failed to import", "no_such_module_here")
    empty = sweep_file(tmp_path, "[]", "empty.py")
    one_line_error(capsys, [*start, "--sweep", str(empty)], "empty.py", "returned no trials")
    unknown = sweep_file(tmp_path, "[{'seed': 0}, {'optimizer.learnin_rate': 0.1}]", "unknown.py")
    one_line_error(capsys, [*start, "--sweep", str(unknown)], "trial 1", "unknown config key 'optimizer.learnin_rate'")
    unknown_field = sweep_file(tmp_path, "[{'model.kwargs.no_such_field': 1}]", "field.py")
    one_line_error(capsys, [*start, "--sweep", str(unknown_field)], "model.kwargs.no_such_field")
    assert not (tmp_path / "s").exists()  # Nothing was recorded, let alone run.
    two = sweep_file(tmp_path, "sweeps.sweep('seed', [0, 1])", "two.py")
    one_line_error(capsys, [*start, "--sweep", str(two), "--array_index", "2"], "--array_index=2", "--array=0-1")
    one_line_error(capsys, ["--workdir", str(tmp_path / "s"), "--array_index", "-1"], "--array_index=-1")
    one_line_error(capsys, ["--workdir", str(tmp_path / "none"), "--report"], "holds no sweep.json")
    other = str(helpers.ROOT / "configs" / "mnist_cnn.py")
    one_line_error(
        capsys, ["--config", other, "--sweep", str(two), "--workdir", str(tmp_path / "s")], "another --workdir"
    )


def test_devices_are_divided_between_parallel_trials():
    cpu = {"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    assert local.gpu_ids(cpu) == []
    assert (
        local.device_shares(2, cpu) == [{"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=4"}] * 2
    )
    assert local.device_shares(3, {"JAX_PLATFORMS": "cpu"}) == [{}, {}, {}]  # One device each, as without a flag.
    assert local.gpu_ids({"CUDA_VISIBLE_DEVICES": "2,3,-1,4"}) == ["2", "3"]
    four = ["0", "1", "2", "3"]
    assert local.device_shares(2, {}, four) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert (
        local.device_shares(3, {}, ["0"])
        == [{"CUDA_VISIBLE_DEVICES": "0", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.3"}] * 3
    )
    shares = local.device_shares(4, {}, ["0", "1"])
    assert [s["CUDA_VISIBLE_DEVICES"] for s in shares] == ["0", "1", "0", "1"]
    assert {s["XLA_PYTHON_CLIENT_MEM_FRACTION"] for s in shares} == {"0.45"}
    assert local.describe_shares(shares) == "on GPU 0 (0.45 of its memory), GPU 1 (0.45 of its memory)" + (
        ", GPU 0 (0.45 of its memory), GPU 1 (0.45 of its memory)"
    )
    assert local.describe_shares(local.device_shares(2, cpu)) == "each on 4 CPU device(s)"


def report_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_parallel_sweep_killed_resumed_and_reported(tmp_path, capsys):
    from jaxdl import train

    spec = sweep_file(
        tmp_path, "sweeps.product(sweeps.sweep('optimizer.learning_rate', [0.01, 0.1]), sweeps.sweep('seed', [0, 1]))"
    )
    workdir = tmp_path / "sweep"
    overrides = [a[len("--config.") :] for a in TINY]
    sweep = Sweep.prepare(workdir, DIGITS, spec, overrides)
    killed, failing = sweep.trials[1], sweep.trials[2]
    # A trial killed at step 3 (its checkpoint of step 2 kept), and one that fails: its workdir is a file.
    with pytest.raises(helpers.Crash):
        train.train_and_evaluate(sweep.trial_config(killed), sweep.trial_dir(killed), hooks=[helpers.crash_at(3)])
    sweep.trial_dir(failing).write_text("in the way\n")
    capsys.readouterr()

    assert (
        sweep_cli(["--config", DIGITS, "--sweep", str(spec), "--workdir", str(workdir), "--parallel", "2", *TINY]) == 1
    )
    out, err = capsys.readouterr()
    assert "2 at a time, each on 4 CPU device(s)" in out  # The 8 test devices, halved.
    assert f"[{killed.name}] resuming from step 2 to 4" in out
    assert f"[{failing.name}] " in out and f"{failing.name}: failed (exit code 2)" in out
    assert f"1 of 4 trial(s) did not finish: {failing.name}" in err
    assert [sweep.finished(t) for t in sweep.trials] == [True, True, False, True]
    report = (workdir / "report.md").read_text()  # Written after the run, the failed trial listed.
    assert f"Not started: {failing.name}." in report

    sweep.trial_dir(failing).unlink()
    assert sweep_cli(["--workdir", str(workdir), "--parallel", "2"]) == 0  # A re-launch from sweep.json.
    out, _ = capsys.readouterr()
    assert "4 trial(s): 3 finished (skipped), 0 to resume, 1 to start" in out
    assert f"starting {failing.name}" in out and f"starting {killed.name}" not in out
    assert all(sweep.finished(t) for t in sweep.trials)

    assert sweep_cli(["--workdir", str(workdir), "--report", "--metric", "val/accuracy"]) == 0
    out, _ = capsys.readouterr()
    rows = report_rows(workdir / "report.csv")
    assert [r["trial"] for r in rows] == [t.name for t in sweep.trials]
    assert {r["optimizer.learning_rate"] for r in rows} == {"0.01", "0.1"} and {r["seed"] for r in rows} == {"0", "1"}
    assert all(r["status"] == "finished" and r["test/accuracy"] for r in rows)
    for row, trial in zip(rows, sweep.trials, strict=True):
        accuracies = [r["val/accuracy"] for r in helpers.metrics_lines(sweep.trial_dir(trial)) if "val/accuracy" in r]
        assert float(row["best val/accuracy"]) == pytest.approx(max(accuracies), rel=1e-5)
        assert float(row["final val/accuracy"]) == pytest.approx(accuracies[-1], rel=1e-5)
    best = [r for r in rows if r["best"] == "yes"]
    assert len(best) == 1 and float(best[0]["best val/accuracy"]) == max(float(r["best val/accuracy"]) for r in rows)
    markdown = (workdir / "report.md").read_text()
    assert f"| **best** | **{best[0]['trial']}** |" in markdown and "Best by highest val/accuracy" in markdown
    assert "test/* are of each trial's best checkpoint by val/loss" in markdown  # Not by --metric.
    assert markdown in out
    assert (workdir / "report_val_accuracy.png").stat().st_size > 10_000
    # The default metric is the runs' own best_metric (the lowest validation loss for digits).
    assert sweep_cli(["--workdir", str(workdir), "--report"]) == 0
    assert "Best by lowest val/loss" in capsys.readouterr().out
    assert not math.isnan(float(report_rows(workdir / "report.csv")[0]["best val/loss"]))


@pytest.mark.slow
def test_array_index_runs_one_trial_in_process(tmp_path, capsys):
    spec = sweep_file(tmp_path, "sweeps.sweep('seed', [0, 1, 2])")
    workdir = tmp_path / "sweep"
    argv = ["--config", DIGITS, "--sweep", str(spec), "--workdir", str(workdir), *TINY]
    assert sweep_cli([*argv, "--array_index", "1"]) == 0
    record = json.loads((workdir / "sweep.json").read_text())
    assert [t["name"] for t in record["trials"]] == ["seed=0", "seed=1", "seed=2"]
    assert record["config"] == DIGITS and record["overrides"] == [a[len("--config.") :] for a in TINY]
    assert sorted(p.name for p in workdir.iterdir() if p.is_dir()) == ["seed=1"]
    results = json.loads((workdir / "seed=1" / "results.json").read_text())
    assert results["final_step"] == 4
    expected = copy.deepcopy(configuration.load_config(DIGITS))
    configuration.apply_overrides(expected, [*record["overrides"], "seed=1"])
    assert results["config_hash"] == configuration.config_hash(expected)
    capsys.readouterr()
    assert sweep_cli(["--workdir", str(workdir), "--array_index", "1"]) == 0  # A requeued task: nothing to do.
    assert "seed=1: finished before, skipped" in capsys.readouterr().out


def test_slurm_array_script_passes_the_task_id(tmp_path):
    """Through a stand-in srun: the array task's index reaches jaxdl-sweep (past the trials: one line, exit 2)."""
    import os
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    spec = sweep_file(tmp_path, "sweeps.sweep('seed', [0, 1])")
    script = helpers.ROOT / "experiments" / "launch_slurm_sweep.sh"
    argv = ["bash", str(script), f"--config={DIGITS}", f"--sweep={spec}", f"--workdir={tmp_path / 'sweep'}"]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "JAXDL_PYTHON": sys.executable}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a job array task" in result.stderr
    result = subprocess.run(argv, env={**env, "SLURM_ARRAY_TASK_ID": "2"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "jaxdl-sweep: error: --array_index=2 is past the sweep's 2 trials (indices 0..1); "
        "submit the job array as sbatch --array=0-1"
    ]


def test_a_relaunch_keeps_each_trials_workdir(tmp_path):
    """A trial is its overrides: re-launched with a reordered or longer sweep, it keeps the name it was given."""
    workdir = tmp_path / "s"
    Sweep.prepare(workdir, DIGITS, None, ["training.num_steps=4"], [{"seed": 0}, {"seed": 1}])
    record = json.loads((workdir / "sweep.json").read_text())
    record["trials"][0]["name"] = "named-by-an-older-jaxdl"
    (workdir / "sweep.json").write_text(json.dumps(record))
    grown = Sweep.prepare(workdir, DIGITS, None, ["training.num_steps=4"], [{"seed": 1}, {"seed": 0}, {"seed": 2}])
    assert [t.name for t in grown.trials] == ["seed=1", "named-by-an-older-jaxdl", "seed=2"]
    again = Sweep.prepare(workdir)  # --workdir alone: the recorded sweep.
    assert (again.trials, again.overrides, again.sweep) == (grown.trials, ["training.num_steps=4"], "")
