"""Multi-process runs through the launchers: experiments/launch_local.py and experiments/launch_slurm.sh."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from jaxdl import train
from jaxdl.data import datasets, pipeline
from tests import helpers

pytestmark = pytest.mark.slow  # End-to-end runs; `-m "not slow"` leaves them out.

LAUNCH_LOCAL = helpers.ROOT / "experiments" / "launch_local.py"
LAUNCH_SLURM = helpers.ROOT / "experiments" / "launch_slurm.sh"


def test_two_processes_match_one_process_with_the_same_devices(tmp_path):
    """launch_local.py -n 2 --devices_per_process 2 trains like one process with 4 devices."""
    datasets.local_builder("digits")  # Built once here, so the two processes never race to build it.
    reference = train.train_and_evaluate(helpers.tiny_cnn(parallel__num_devices=4), tmp_path / "single")

    workdir = tmp_path / "multi"
    args = [f"--workdir={workdir}", *helpers.cli_args(parallel__num_devices=0)]
    launcher = subprocess.Popen(
        [sys.executable, str(LAUNCH_LOCAL), "-n", "2", "--devices_per_process", "2", "--", *args],
        cwd=helpers.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = launcher.communicate(timeout=300)[0]
    finally:
        if launcher.poll() is None:  # A hung collective must not outlive the test: a second SIGTERM kills.
            launcher.terminate()
            time.sleep(1)
            launcher.terminate()
            launcher.wait(30)
    assert launcher.returncode == 0, output[-5000:]
    lines = output.splitlines()
    assert all(line.startswith(("[0] ", "[1] ")) for line in lines), [line for line in lines if line[:1] != "["][:5]
    assert any(line.startswith("[1] ") for line in lines) and any('[0]   "loss"' in line for line in lines)

    results = json.loads((workdir / "results.json").read_text())
    assert results["num_processes"] == 2 and results["num_devices"] == 4
    np.testing.assert_allclose(results["test"]["loss"], reference["test"]["loss"], rtol=1e-4)
    helpers.assert_trees_close(
        helpers.saved_params(tmp_path / "single")[0], helpers.saved_params(workdir)[0], rtol=1e-4, atol=1e-5
    )
    # Each process saved its own data-iterator state next to the shared arrays.
    saved = {p.name for p in (workdir / "checkpoints" / "10" / "data").iterdir()}
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= saved


def _launch(workdir, processes: int, devices: int, args: list[str]) -> dict:
    """results.json of `launch_local.py -n processes --devices_per_process devices -- args` (exit code 0 asserted).

    XLA compiles as users run it (`helpers.default_compiler_env`): the layouts are compared bit for bit.
    """
    command = [sys.executable, str(LAUNCH_LOCAL), "-n", str(processes), "--devices_per_process", str(devices)]
    launcher = subprocess.Popen(
        [*command, "--", f"--workdir={workdir}", *args], env=helpers.default_compiler_env(),
        cwd=helpers.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = launcher.communicate(timeout=600)[0]
    finally:
        if launcher.poll() is None:  # A hung collective must not outlive the test: a second SIGTERM kills.
            launcher.terminate()
            time.sleep(1)
            launcher.terminate()
            launcher.wait(30)
    assert launcher.returncode == 0, output[-5000:]
    return json.loads((workdir / "results.json").read_text())


# A few steps on 48 shapes images, evaluated at the end; every device of every process.
_SMALL_SHAPES = {
    "dataset.split_sizes": "(48, 16, 16)",
    "training.batch_size": 8,
    "training.num_steps": 6,
    "training.eval_every_steps": 6,
    "training.checkpoint_every_steps": 6,
    "training.log_every_steps": 6,
    "training.progress_bar": "false",
    "parallel.num_devices": 0,
}
_YOLOV8_DATA = helpers.config("shapes_yolov8n").dataset
_LAYOUT_RUNS = {
    # Mosaic's partners are records drawn by global position. shapes_yolov8n's data (mosaic(p=0.5),
    # flips, 8 boxes) on the yolov1_tiny detector: the same pipeline and task, and a process that
    # compiles in 13 s instead of yolov8_tiny's 33 s (three processes a run).
    "detection_mosaic": (
        "shapes_yolov1",
        {
            "model.name": "yolov1_tiny",
            "model.kwargs": "{}",
            "dataset.max_boxes": _YOLOV8_DATA.max_boxes,
            "dataset.train_transforms": _YOLOV8_DATA.train_transforms,
            "schedule.warmup_steps": 0,
        },
    ),
    "segmentation": (
        "shapes_unet",
        {"model.kwargs": "{'width': 4, 'depth': 2, 'padding': 'same', 'batch_norm': True, 'image_size': 64}"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_LAYOUT_RUNS))
def test_two_processes_of_one_device_equal_one_process_of_two(name, tmp_path):
    """2 processes x 1 device and 1 process x 2 devices see the same batches: the same losses, every digit.

    Training and validation give the same numbers to the last digit and the best
    checkpoints hold the same params bit for bit. The test split is evaluated with
    the best checkpoint restored onto each layout's devices, a program XLA may sum
    in another order on some CPUs: its loss is compared to float rounding.
    """
    config, overrides = _LAYOUT_RUNS[name]
    overrides = {**_SMALL_SHAPES, **overrides}
    cfg = helpers.config(config, **{k.replace(".", "__"): v for k, v in overrides.items()})
    pipeline.Splits(cfg.dataset, batch_size=8)  # Built once here, so the processes never race to build it.
    args = [f"--config={helpers.ROOT / 'configs' / f'{config}.py'}"] + [
        f"--config.{k}={v}" for k, v in overrides.items()
    ]
    two_processes = _launch(tmp_path / "2x1", 2, 1, args)
    two_devices = _launch(tmp_path / "1x2", 1, 2, args)
    assert (two_processes["num_processes"], two_devices["num_processes"]) == (2, 1)
    assert two_processes["num_devices"] == two_devices["num_devices"] == 2
    logged = [
        [(line["step"], {k: v for k, v in line.items() if k.startswith(("train/", "val/"))}) for line in lines]
        for lines in (helpers.metrics_lines(tmp_path / "2x1"), helpers.metrics_lines(tmp_path / "1x2"))
    ]
    assert logged[0] == logged[1] and any("val/loss" in metrics for _, metrics in logged[0]), logged
    best = [helpers.saved_params(tmp_path / layout, "best") for layout in ("2x1", "1x2")]
    assert best[0][1] == best[1][1]
    for a, b in zip(jax.tree.leaves(best[0][0]), jax.tree.leaves(best[1][0]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(two_processes["test"]["loss"], two_devices["test"]["loss"], rtol=1e-6)


def test_launcher_commands_and_environment():
    """Process i gets the coordinator, N and i appended; K simulated CPU devices replace any earlier count."""
    launch = helpers.load_experiment("launch_local")
    commands = launch.train_commands(2, ["--config=c.py", "--workdir=w"], 1234)
    assert [c[1:] for c in commands] == [
        ["-m", "jaxdl.main", "--config=c.py", "--workdir=w", "--config.parallel.distributed=true",
         "--config.parallel.coordinator_address=127.0.0.1:1234", "--config.parallel.num_processes=2",
         f"--config.parallel.process_id={i}"]
        for i in range(2)
    ]  # fmt: skip
    env = launch.process_env(3, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1", "A": "b"})
    assert env == {
        "XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=3",
        "JAX_PLATFORMS": "cpu",
        "A": "b",
    }
    assert launch.process_env(None, {"A": "b"}) == {"A": "b"}
    usage = subprocess.run([sys.executable, str(LAUNCH_LOCAL), "-n", "0", "--", "--workdir=w"], capture_output=True)
    assert usage.returncode == 2 and b"-n must be at least 1" in usage.stderr


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _supervising(children: list[str]) -> subprocess.Popen:
    """A process that runs launch_local.supervise over `python -c child` processes (stdout piped)."""
    wrapper = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('launch_local', {str(LAUNCH_LOCAL)!r})\n"
        "launch = importlib.util.module_from_spec(spec); spec.loader.exec_module(launch)\n"
        f"sys.exit(launch.supervise([[sys.executable, '-c', child] for child in {children!r}]))\n"
    )
    return subprocess.Popen(_python(wrapper), stdout=subprocess.PIPE, text=True)


def test_a_failing_process_stops_the_others_and_sets_the_exit_code(capsys):
    launch = helpers.load_experiment("launch_local")
    start = time.time()
    code = launch.supervise(
        [_python("import time; time.sleep(120)"), _python("import sys; print('failing'); sys.exit(3)")]
    )
    assert code == 3 and time.time() - start < 60  # Not the sleeper's 120 s: it was killed.
    assert "[1] failing" in capsys.readouterr().out
    assert launch.supervise([_python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")]) == 128 + 9


def test_sigterm_is_forwarded_to_every_process():
    child = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('got SIGTERM', flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        # Short sleeps: a signal caught just before a long sleep starts would wait for its end (CPython).
        "for _ in range(2400): time.sleep(0.05)\n"
    )
    launcher = _supervising([child, child])
    watchdog = threading.Timer(60, launcher.kill)  # A hung launcher ends the reads below with EOF.
    watchdog.start()
    try:
        ready = {launcher.stdout.readline().strip() for _ in range(2)}
        assert ready == {"[0] ready", "[1] ready"}
        launcher.send_signal(signal.SIGTERM)
        rest = launcher.communicate(timeout=60)[0]
    finally:
        watchdog.cancel()
        launcher.kill()
    assert launcher.returncode == 0
    assert sorted(rest.splitlines()) == ["[0] got SIGTERM", "[1] got SIGTERM"]


def test_a_second_signal_kills_the_processes():
    child = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
    launcher = _supervising([child + "time.sleep(120)\n"])
    watchdog = threading.Timer(60, launcher.kill)
    watchdog.start()
    try:
        assert launcher.stdout.readline() == "[0] ready\n"
        launcher.send_signal(signal.SIGTERM)  # Ignored by the process...
        time.sleep(0.5)
        launcher.send_signal(signal.SIGTERM)  # ...the second one kills it.
        launcher.communicate(timeout=30)
    finally:
        watchdog.cancel()
        launcher.kill()
    assert launcher.returncode == 128 + signal.SIGKILL


FAKE_SRUN = """#!{python}
# Stands in for srun: starts SLURM_NTASKS copies of the command with the variables JAX's SlurmCluster reads.
import os, subprocess, sys
args = sys.argv[1:]
while args[0].startswith("--"):
    args.pop(0)
tasks = int(os.environ["SLURM_NTASKS"])
env = lambda i: {{**os.environ, "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_NUM_NODES": "1",
                  "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}}
processes = [subprocess.Popen(args, env=env(i)) for i in range(tasks)]
sys.exit(max(p.wait() for p in processes))
"""


def _free_slurm_port() -> int:
    """A free port in the range JAX's SlurmCluster picks from (the job id modulo 4096 above 61439)."""
    for port in random.sample(range(65535 - 2**12 + 1, 65536), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 61440..65535")


def test_slurm_script_lets_jax_find_the_processes_from_slurm_variables(tmp_path):
    """Through a fake srun, both processes join one JAX cluster from SLURM's variables alone.

    Cheap probe: --config.parallel.num_devices=1 is refused only once jax.process_count() > 1,
    so that one-line error from both processes shows the cluster was found (no training runs).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (bin_dir / "srun").chmod(0o755)
    port = _free_slurm_port()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "JAXDL_PYTHON": sys.executable,
        "SLURM_JOB_ID": str(port - (65535 - 2**12 + 1)),  # JAX derives the coordinator's port from the job id.
        "SLURM_NTASKS": "2",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        ["bash", str(LAUNCH_SLURM), *helpers.cli_args(parallel__num_devices=1), f"--workdir={tmp_path / 'run'}"],
        cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    refusals = result.stderr.count("config.parallel.num_devices must be 0 in a multi-process run")
    assert refusals == 2, result.stderr[-3000:]
