"""Test setup: 8 simulated CPU devices, an isolated data dir, and small shared helpers."""

import inspect
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

# Must be set before JAX starts: sharding tests need several devices.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# ultralytics (the YOLO reference) must not reach the network nor write settings into $HOME.
os.environ["YOLO_OFFLINE"] = "1"
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-"))

# One test run's workers (pytest-xdist starts them from this process, with its
# environment) share a fresh dir: jaxdl's datasets are built there once, under a
# lock, and JAX's compilation cache lets a program compiled by one run, worker or
# subprocess be loaded by the next.
_OWN_SHARED_DIR = "JAXDL_TEST_SHARED_DIR" not in os.environ
if _OWN_SHARED_DIR:
    os.environ["JAXDL_TEST_SHARED_DIR"] = tempfile.mkdtemp(prefix="jaxdl-tests-")
SHARED_DIR = Path(os.environ["JAXDL_TEST_SHARED_DIR"])
os.environ["JAXDL_DATA_DIR"] = str(SHARED_DIR / "datasets")
os.environ["JAXDL_COMPILATION_CACHE_DIR"] = str(SHARED_DIR / "compilation")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


def pytest_configure(config):
    """Registers the markers that select parts of the suite (`pytest -m "not slow"` while working)."""
    config.addinivalue_line("markers", "slow: an end-to-end training run or a test over 10 s on 2 cores")
    config.addinivalue_line("markers", "reference: compares with an installed reference (torch, ultralytics, ...)")


# What a test body names when it compares with an installed reference implementation.
_REFERENCES = re.compile(
    r"\b(torch|torchvision|ultralytics|smp|segmentation_models_pytorch|pycocotools|COCOeval|faster_coco_eval"
    r"|statsmodels|torch_reference)\b"
)


def pytest_collection_modifyitems(config, items):
    """Marks `reference` every test whose body names a reference package, so none is forgotten."""
    for item in items:
        function = getattr(item, "function", None)
        try:
            source = inspect.getsource(function) if function is not None else ""
        except (OSError, TypeError):
            continue
        if _REFERENCES.search(source):
            item.add_marker(pytest.mark.reference)


def pytest_sessionfinish(session, exitstatus):
    """The process that made the shared dir removes it when the run ends."""
    if _OWN_SHARED_DIR and not hasattr(session.config, "workerinput"):
        shutil.rmtree(SHARED_DIR, ignore_errors=True)
