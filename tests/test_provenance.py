"""provenance.json: the record of a run in a dirty git checkout, changes found on resume, jaxdl-eval's differences."""

import json
import logging
import os
import platform
import shutil
import subprocess

import jax
import numpy as np
import pytest

from jaxdl import configuration, provenance
from jaxdl.data import datasets, sources
from tests import helpers


def _git(cwd, *args) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


@pytest.fixture
def dirty_repo(tmp_path):
    """A git checkout with one commit, a modified tracked file and an untracked module."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "code"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "model.py").write_text("WIDTH = 4\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    (repo / "pkg" / "model.py").write_text("WIDTH = 8\n")
    (repo / "pkg" / "new_layer.py").write_text("DEPTH = 2\n")
    (repo / "pkg" / "__init__.py").write_text("")  # Untracked too: empty, and one without a final newline.
    (repo / "pkg" / "tail.py").write_text("X = 1")
    return repo


def test_record_of_a_run_in_a_dirty_checkout(dirty_repo, tmp_path):
    cfg = helpers.tiny_cnn(seed=3)
    workdir = tmp_path / "run"
    workdir.mkdir()
    argv = ["jaxdl-train", "--config=configs/digits_cnn.py", "--config.seed=3"]
    record = provenance.record_start(
        cfg, workdir, start_step=0, devices_used=1, code_root=dirty_repo / "pkg", argv=argv
    )
    saved = json.loads((workdir / "provenance.json").read_text())
    assert saved == record
    assert saved["argv"] == argv
    assert saved["code"]["commit"] == _git(dirty_repo, "rev-parse", "HEAD")
    assert saved["code"]["dirty"] is True
    assert saved["code"]["untracked"] == ["pkg/__init__.py", "pkg/new_layer.py", "pkg/tail.py"]
    # The saved diff turns a clean clone of the commit into the tree the run was started from.
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(dirty_repo), str(clone))
    _git(clone, "apply", str(workdir / "provenance.diff"))
    for name in ("model.py", "new_layer.py", "__init__.py", "tail.py"):
        assert (clone / "pkg" / name).read_text() == (dirty_repo / "pkg" / name).read_text(), name

    assert saved["python"] == platform.python_version()
    assert saved["packages"]["jax"] == jax.__version__
    assert saved["packages"]["numpy"] == np.__version__
    assert {"jaxdl", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain"} <= set(saved["packages"])
    assert saved["devices"] == {
        "platform": "cpu",
        "kind": jax.devices()[0].device_kind,
        "count": jax.device_count(),
        "local_count": jax.local_device_count(),
        "used": 1,
        "process_count": 1,
    }
    assert saved["environment"]["XLA_FLAGS"] == os.environ["XLA_FLAGS"]
    assert saved["environment"]["JAX_PLATFORMS"] == os.environ["JAX_PLATFORMS"]
    data = saved["data"]
    assert (data["name"], data["version"]) == ("digits", "1.0.0")
    assert sum(data["fingerprint"]["split_sizes"].values()) == 1797  # scikit-learn's digits.
    assert saved["seed"] == 3
    assert saved["config_hash"] == configuration.config_hash(cfg)

    # A clean checkout: not dirty, no diff beside the record (a stale one is removed).
    _git(dirty_repo, "add", ".")
    _git(dirty_repo, "commit", "-q", "-m", "second")
    clean = provenance.record_start(cfg, workdir, start_step=0, devices_used=1, code_root=dirty_repo)
    assert clean["code"]["dirty"] is False and not (workdir / "provenance.diff").exists()
    assert provenance.git_state(tmp_path / "run") == (None, "")  # Outside any checkout.


def test_data_fingerprint_sees_records_and_sizes():
    records = [{"image": np.full((2, 2), i, np.uint8), "label": i, "name": b"x"} for i in range(10)]
    fingerprint = provenance.data_fingerprint(records, {"train": 10, "test": 3})
    assert fingerprint == provenance.data_fingerprint(list(records), {"train": 10, "test": 3})
    changed = [dict(r) for r in records]
    changed[9]["label"] = 99
    assert provenance.data_fingerprint(changed, {"train": 10, "test": 3})["sha256"] != fingerprint["sha256"]
    assert provenance.data_fingerprint(records, {"train": 10, "test": 4})["sha256"] != fingerprint["sha256"]
    # Read from disk or decoded into memory, the records give one fingerprint.
    dataset = helpers.tiny_cnn().dataset
    dataset.cache_in_memory = False
    raw = sources.open_split(dataset, "train")
    assert provenance.data_fingerprint(raw, {}) == provenance.data_fingerprint(datasets.InMemorySource(raw), {})


def test_resume_with_another_device_count_warns_once(dirty_repo, tmp_path, caplog):
    cfg = helpers.tiny_cnn()
    provenance.record_start(cfg, tmp_path, start_step=0, devices_used=1, code_root=dirty_repo)
    with caplog.at_level(logging.WARNING, logger="jaxdl.provenance"):
        provenance.record_start(cfg, tmp_path, start_step=5, devices_used=2, code_root=dirty_repo)
        # Compared with what the latest part ran with: the same count again is no change.
        provenance.record_start(cfg, tmp_path, start_step=8, devices_used=2, code_root=dirty_repo)
    messages = [r.getMessage() for r in caplog.records if r.name == "jaxdl.provenance"]
    assert len(messages) == 1 and "device count 1 -> 2" in messages[0], messages
    saved = json.loads((tmp_path / "provenance.json").read_text())
    assert saved["devices"]["used"] == 1  # The start stays as it was.
    [change] = saved["changes"]
    assert change["step"] == 5 and change["devices.used"] == {"from": 1, "to": 2}


@pytest.mark.slow
def test_resume_warns_and_eval_prints_differences(tmp_path, caplog, capsys):
    from jaxdl import main, train

    workdir = tmp_path / "run"
    cfg = helpers.tiny_cnn(parallel__num_devices=1)
    with pytest.raises(helpers.Crash):
        train.train_and_evaluate(cfg, workdir, hooks=[helpers.crash_at(7)])  # Checkpointed at step 5.
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(helpers.tiny_cnn(parallel__num_devices=2), workdir)
    device_lines = [r.getMessage() for r in caplog.records if "device count" in r.getMessage()]
    assert len(device_lines) == 1 and "at step 5" in device_lines[0], device_lines
    saved = json.loads((workdir / "provenance.json").read_text())
    assert saved["changes"][-1]["devices.used"] == {"from": 1, "to": 2}

    saved["packages"]["jax"] = "0.0.1"
    (workdir / "provenance.json").write_text(json.dumps(saved))
    capsys.readouterr()
    assert main.eval_cli(["--workdir", str(workdir)]) == 0
    err = capsys.readouterr().err
    assert f"jaxdl-eval: provenance: packages.jax: 0.0.1 (run) -> {jax.__version__} (now)" in err
