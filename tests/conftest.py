"""Test setup: 8 simulated CPU devices, an isolated data dir, and small shared helpers."""

import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The tests' programs are tiny and run a few steps, so compiling them is most of the suite's
# time. Two XLA:CPU flags compile them faster; the HLO is the same, so the arithmetic is too, up
# to float rounding: backend optimisation level 0 (no LLVM loop optimisations) and the elemental
# fusion emitters instead of the MLIR ones. tests/test_conv.py's family tests on the 2-core CPU:
# 89 s with neither, 58 s with the first, 31 s with both. XLA aborts on a flag it does not know,
# so the flags this jaxlib accepts are probed once per test run (the controller's; workers and
# the subprocesses the tests start inherit the result). JAXDL_TEST_XLA_OPT=1 tests optimised code.
_FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def _xla_accepts(flags: list[str]) -> bool:
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True)
    return probe.returncode == 0


def _fast_compile_flags() -> list[str]:
    if os.environ.get("JAXDL_TEST_XLA_OPT") == "1":
        return []
    if "JAXDL_TEST_FAST_COMPILE" not in os.environ:
        flags = list(_FAST_COMPILE)
        if not _xla_accepts(flags):
            flags = [flag for flag in _FAST_COMPILE if _xla_accepts([flag])]
        os.environ["JAXDL_TEST_FAST_COMPILE"] = " ".join(flags)
    return os.environ["JAXDL_TEST_FAST_COMPILE"].split()


# Must be set before JAX starts: sharding tests need several devices. Workers inherit the
# controller's flags, so each is added once.
_EXISTING_FLAGS = os.environ.get("XLA_FLAGS", "").split()
_NEW_FLAGS = ["--xla_force_host_platform_device_count=8", *_fast_compile_flags()]
os.environ["XLA_FLAGS"] = " ".join([*_EXISTING_FLAGS, *(f for f in _NEW_FLAGS if f not in _EXISTING_FLAGS)])
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
