"""Every input a new user can get wrong ends in one line on stderr and a non-zero exit, never a traceback.

Each case runs `python -m jaxdl.main` in a fresh process on one CPU device, as
a user would, and checks the whole of stderr.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers

CONFIG = str(helpers.ROOT / "configs" / "digits_cnn.py")
RESNET = ["--config.model.name=resnet_tiny", "--config.model.kwargs={}"]


def _files(tmp_path):
    """The bad files of the cases: a non-Python config, corrupt state dicts and workdirs."""
    (tmp_path / "notes.yaml").write_text("model: cnn\n")
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    (tmp_path / "weights.safetensors").write_bytes(b"not a state dict")
    (tmp_path / "weights.npz").write_bytes(b"not a state dict either")
    np.savez(tmp_path / "unrelated.npz", w=np.zeros(3, np.float32))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text('{"seed": 0,')
    (tmp_path / "afile").write_text("")


CASES = {
    "num_devices above the devices": (
        ["--config.parallel.num_devices=3"],
        "config.parallel.num_devices=3 is not valid; only 1 device exists here",
    ),
    "batch larger than the dataset": (
        ["--config.training.batch_size=100000"],
        "config.training.batch_size=100000 is larger than the 1258 training examples of digits",
    ),
    "rate outside [0, 1)": (
        ["--config.model.kwargs.dropout_rate=1.5"],
        "config.model.kwargs.dropout_rate=1.5 is not valid; it must be in [0, 1)",
    ),
    "zero width": (["--config.model.kwargs.features=(0,64)"], "config.model.kwargs.features=(0, 64) is not valid"),
    "config that is not Python": (["--config={tmp}/notes.yaml"], "'{tmp}/notes.yaml' is not a Python config file"),
    "config with a syntax error": (["--config={tmp}/broken.py"], "'{tmp}/broken.py' is not valid Python (line 1"),
    "init_from a file that is not a state dict": (
        ["--config.init_from={tmp}/weights.safetensors", *RESNET],
        "config.init_from='{tmp}/weights.safetensors' is not a readable state dict (.safetensors, .npz, .pth",
    ),
    "init_from a corrupt npz": (
        ["--config.init_from={tmp}/weights.npz", *RESNET],
        "config.init_from='{tmp}/weights.npz' is not a readable state dict (.safetensors, .npz, .pth",
    ),
    "init_from a state dict of another model": (
        ["--config.init_from={tmp}/unrelated.npz", *RESNET],
        "config.init_from='{tmp}/unrelated.npz': state dict does not fit the model: missing tensor",
    ),
    "init_from for a family without converter": (
        ["--config.init_from={tmp}/unrelated.npz"],
        "config.init_from='{tmp}/unrelated.npz': no PyTorch converter for CNN",
    ),
    "negative epochs": (
        ["--config.training.num_epochs=-1"],
        "config.training.num_epochs=-1.0 is not valid; it must be > 0",
    ),
    "decay boundaries not increasing": (
        ["--config.schedule.decay_boundaries=(0.9,0.1)"],
        "config.schedule.decay_boundaries=(0.9, 0.1) is not valid; give increasing fractions in (0, 1)",
    ),
    "momentum above 1": (
        ["--config.optimizer.momentum=2"],
        "config.optimizer.momentum=2.0 is not valid; it must be in [0, 1)",
    ),
    "horizon 0 on a classification config": (
        ["--config.dataset.horizon=0"],
        "config.dataset.horizon=0 is not valid; it must be >= 1",
    ),
    "corrupt config.json in the workdir": (["--workdir={tmp}/corrupt"], "{tmp}/corrupt/config.json is not valid JSON"),
    "workdir that is a file": (["--workdir={tmp}/afile"], "--workdir '{tmp}/afile' is a file, not a directory"),
}


@pytest.fixture(scope="module")
def prepared_data():
    """The test run's data dir with digits built, so that no case prints the one-time build messages."""
    from jaxdl.data import datasets

    datasets.local_builder("digits")
    return datasets.default_data_dir()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_no_traceback(case, tmp_path, prepared_data):
    _files(tmp_path)
    flags, expected = CASES[case]
    args = [f"--config={CONFIG}", f"--workdir={tmp_path / 'run'}", "--config.training.progress_bar=false"]
    args += [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    env = {**os.environ, "JAXDL_DATA_DIR": str(prepared_data), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = ""  # One CPU device, as on a laptop.
    done = subprocess.run(
        [sys.executable, "-m", "jaxdl.main", *args],
        cwd=helpers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("jaxdl-train: error: ") and expected.replace("{tmp}", str(tmp_path)) in lines[0], lines[
        0
    ]
    assert not (tmp_path / "run").exists()  # Stopped before anything was started.


# Cases of detection configs: the last --config wins, and the input size is refused before any data is read.
DETECTION_CASES = {
    "letterbox size the detector's strides cannot divide": (
        [
            f"--config={helpers.ROOT / 'configs' / 'shapes_yolov8n.py'}",
            "--config.dataset.train_transforms=letterbox(size=100)|rescale(scale=0.0039)",
        ],
        "config.dataset.train_transforms='letterbox(size=100)|rescale(scale=0.0039)' makes inputs of 100x100, "
        "which config.model.name='yolov8n' cannot take: YOLOv8 needs an input height and width that are multiples "
        "of 32",
    ),
}


@pytest.mark.parametrize("case", sorted(DETECTION_CASES))
def test_bad_detection_input_is_one_line_and_no_traceback(case, tmp_path, prepared_data, monkeypatch):
    monkeypatch.setitem(CASES, case, DETECTION_CASES[case])
    test_bad_input_is_one_line_and_no_traceback(case, tmp_path, prepared_data)
