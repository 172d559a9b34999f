"""Two JAX processes on this machine (2 CPU devices each) train like one process with 4 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from jaxdl import train
from jaxdl.data import datasets
from tests import helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process_with_the_same_devices(tmp_path):
    datasets.local_builder("digits")  # Built once here, so the two processes never race to build it.
    reference = train.train_and_evaluate(helpers.tiny_cnn(parallel__num_devices=4), tmp_path / "single")

    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    workdir = tmp_path / "multi"
    processes = [
        subprocess.Popen(
            [
                sys.executable, "-m", "jaxdl.main", f"--workdir={workdir}",
                *helpers.cli_args(
                    parallel__num_devices=0,
                    parallel__distributed="true",
                    parallel__coordinator_address=address,
                    parallel__num_processes=2,
                    parallel__process_id=index,
                ),
            ],
            cwd=helpers.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for index in range(2)
    ]  # fmt: skip
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for p in processes:  # A hung collective must not outlive the test.
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], outputs

    results = json.loads((workdir / "results.json").read_text())
    assert results["num_processes"] == 2 and results["num_devices"] == 4
    np.testing.assert_allclose(results["test"]["loss"], reference["test"]["loss"], rtol=1e-4)
    helpers.assert_trees_close(
        helpers.saved_params(tmp_path / "single")[0], helpers.saved_params(workdir)[0], rtol=1e-4, atol=1e-5
    )
    # Each process saved its own data-iterator state next to the shared arrays.
    saved = {p.name for p in (workdir / "checkpoints" / "10" / "data").iterdir()}
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= saved
