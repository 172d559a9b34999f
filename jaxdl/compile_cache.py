"""JAX's persistent compilation cache, on in every jaxdl entry point, and its hit and miss counts.

`config.compilation_cache_dir` (default ~/.cache/jaxdl/compilation, or
$JAXDL_COMPILATION_CACHE_DIR, set in configs/base.py; "" switches it off) holds every program XLA
compiles, keyed by the program, the devices and the jax/jaxlib versions, so a
second process running the same config loads its steps instead of compiling
them. The thresholds are lowered so the small programs of CPU runs are kept
too (JAX's defaults keep only programs that compiled for over a second).

The cache is trusted: an executable read from it runs as it is, so anyone who
can write to the directory can change what a run computes. Keep it private to
its user (jaxdl creates it with mode 0700).

An unwritable directory is one warning line and the run goes on uncached; a
damaged entry is JAX's own warning and a recompile.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

log = logging.getLogger(__name__)

# Programs that compile faster than this are not worth a file (XLA's tiny elementwise kernels).
MIN_COMPILE_SECONDS = 0.05

_HITS = "/jax/compilation_cache/cache_hits"
_REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"


class _Counts:
    """Process-wide counts of JAX's cache events (JAX reports them to listeners, one process-wide list)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.values = {"hits": 0, "requests": 0, "saved_s": 0.0}
        self._listening = False

    def listen(self) -> None:
        """Registers the listeners once per process."""
        with self._lock:
            if self._listening:
                return
            jax.monitoring.register_event_listener(self._event)
            jax.monitoring.register_event_duration_secs_listener(self._duration)
            self._listening = True

    def _event(self, event: str, **kwargs) -> None:
        if event in (_HITS, _REQUESTS):
            with self._lock:
                self.values["hits" if event == _HITS else "requests"] += 1

    def _duration(self, event: str, duration: float, **kwargs) -> None:
        if event == _SAVED:
            with self._lock:
                self.values["saved_s"] += duration

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self.values)


_COUNTS = _Counts()


def configure(path: str) -> Path | None:
    """Points JAX's persistent cache at `path` (~ and $VARS expanded); "" turns it off.

    Call it before the first JAX computation of a process. Returns the
    directory in use, or None when the cache is off (asked to be, or the
    directory cannot be written: one warning line, and the run goes on).
    """
    _COUNTS.listen()
    directory = _usable(path) if path else None
    current = jax.config.jax_compilation_cache_dir
    wanted = str(directory) if directory is not None else None
    if wanted != current:
        jax_cache.set_cache_dir(wanted)
        jax_cache.reset_cache()  # JAX reads the directory once; a changed one must be read again.
    if directory is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory


def _usable(path: str) -> Path | None:
    """The expanded directory, created private to its user, if a file can be written there; else None (warned)."""
    directory = Path(os.path.expandvars(os.path.expanduser(path)))
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        log.warning(
            "config.compilation_cache_dir='%s' cannot be written (%s); running without the compilation cache",
            path,
            error.strerror or type(error).__name__,
        )
        return None
    return directory


class Stats:
    """The cache's hits and misses from its creation until `read()` (JAX's monitoring events)."""

    def __init__(self):
        _COUNTS.listen()
        self._start = _COUNTS.snapshot()

    def read(self) -> dict:
        """{"dir", "hits", "misses", "saved_s"}: compiles served from disk, compiles done, compile time saved."""
        now = _COUNTS.snapshot()
        hits = now["hits"] - self._start["hits"]
        requests = now["requests"] - self._start["requests"]
        return {
            "dir": jax.config.jax_compilation_cache_dir,
            "hits": hits,
            "misses": requests - hits,
            "saved_s": round(now["saved_s"] - self._start["saved_s"], 3),
        }
