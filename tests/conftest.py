"""Test setup: 8 simulated CPU devices, an isolated data dir, and small shared helpers."""

import os
import sys
import tempfile
from pathlib import Path

# Must be set before JAX starts: sharding tests need several devices.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# ultralytics (the YOLO reference) must not reach the network nor write settings into $HOME.
os.environ["YOLO_OFFLINE"] = "1"
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-"))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _data_dir(tmp_path_factory):
    """jaxdl's own datasets are built once per test process in its own temporary dir.

    One dir per process: pytest-xdist workers would otherwise race to build the
    same dataset.
    """
    os.environ["JAXDL_DATA_DIR"] = str(tmp_path_factory.mktemp("datasets"))
