"""The persistent compilation cache: a second process loads what the first compiled; a bad directory is no failure."""

import json
import logging
import os
import subprocess
import sys

import pytest

from jaxdl import compile_cache
from tests import helpers


def _train(workdir, cache_dir) -> dict:
    """results.json of a tiny digits run in a fresh process, one CPU device, with `cache_dir` as its cache."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    args = helpers.cli_args(training__num_steps=4, training__eval_every_steps=0, training__checkpoint_every_steps=0)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxdl.main",
            *args,
            f"--workdir={workdir}",
            f"--config.compilation_cache_dir={cache_dir}",
        ],
        cwd=helpers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads((workdir / "results.json").read_text())


def _entries(cache_dir) -> set[str]:
    return {p.name for p in cache_dir.iterdir() if not p.name.startswith(".")}


@pytest.mark.slow
def test_second_process_loads_the_first_ones_programs(tmp_path):
    cache = tmp_path / "cache"
    first = _train(tmp_path / "first", cache)
    written = _entries(cache)
    second = _train(tmp_path / "second", cache)
    assert first["compilation_cache"]["dir"] == str(cache)
    # The first process found nothing and wrote its programs; the second reads every
    # one of them back. A JAX whose cache rejects its own CPU entries (it then
    # compiles again, silently) counts no hit and fails here.
    assert first["compilation_cache"]["hits"] == 0 and first["compilation_cache"]["misses"] >= len(written) > 0
    assert second["compilation_cache"]["hits"] >= len(written)
    assert _entries(cache) >= written
    assert second["time_to_first_step_s"] < first["time_to_first_step_s"]
    assert second["test"] == first["test"]  # Loaded programs compute the same numbers.

    # Damaged entries are JAX's warning and a recompile, never a failed run. Every entry is
    # damaged: a program near the cache's compile-time threshold may have been written by
    # the second process only (its compile took longer on a loaded machine).
    for name in _entries(cache):
        (cache / name).write_bytes(b"not an executable")
    third = _train(tmp_path / "third", cache)
    assert third["test"] == first["test"]
    assert third["compilation_cache"]["hits"] == 0


@pytest.fixture
def restore_cache():
    """Puts the test run's cache back after a test that points JAX elsewhere."""
    yield
    compile_cache.configure(os.environ["JAXDL_COMPILATION_CACHE_DIR"])


def test_unwritable_directory_is_one_warning_and_no_cache(tmp_path, caplog, restore_cache):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="jaxdl.compile_cache"):
        assert compile_cache.configure(str(blocker / "cache")) is None
    assert len(caplog.records) == 1
    assert "cannot be written" in caplog.records[0].getMessage()
    assert compile_cache.Stats().read()["dir"] is None


def test_empty_path_switches_the_cache_off_and_a_path_on(tmp_path, restore_cache):
    assert compile_cache.configure("") is None
    assert compile_cache.Stats().read()["dir"] is None
    assert compile_cache.configure(str(tmp_path / "c")) == tmp_path / "c"
    assert compile_cache.Stats().read()["dir"] == str(tmp_path / "c")
    assert (tmp_path / "c").stat().st_mode & 0o077 == 0  # Private: its entries are run as they are.


def test_stats_count_hits_and_misses_of_this_process(tmp_path, restore_cache):
    import jax
    import jax.numpy as jnp

    compile_cache.configure(str(tmp_path / "c"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # Keep even this quick program.
    stats = compile_cache.Stats()

    # A fresh function object each time: jit's in-memory cache misses, the persistent one answers.
    def program():
        return jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + jnp.float32(3.25))

    program()(jnp.ones((64, 64))).block_until_ready()
    first = stats.read()
    program()(jnp.ones((64, 64))).block_until_ready()
    second = stats.read()
    assert first["hits"] == 0 and first["misses"] >= 1
    assert second["hits"] == 1 and second["misses"] == first["misses"]
