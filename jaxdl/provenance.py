"""What produced a run: `provenance.json` (and `provenance.diff`), written when the run starts.

The record holds the command line; the versions of Python, jaxdl and every
package jaxdl requires (names read from jaxdl's installed metadata), jaxlib and
any JAX CUDA plugin; the device platform, kind and count (all, and used by the
run's mesh) and the process count; `XLA_FLAGS` and every `JAX_*` variable; the
git commit of the checkout that holds the imported `jaxdl` package, whether it
is dirty (uncommitted changes to tracked files, or untracked source files), with
the diff saved as `provenance.diff` (see `git_state`); the dataset's name,
tfds version and a fingerprint of its records (see `data_fingerprint`); the
seed and the config hash.

A resume that finds a different code (commit or uncommitted diff), data
fingerprint or device count logs one warning line and appends the change to the
record's `changes` list (with the new diff as `provenance.change-N.diff`); it
does not stop the run. `present_differences` compares a record with the
environment of the process that asks (jaxdl-eval prints them).
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import jax
import ml_collections
import numpy as np

from jaxdl import configuration
from jaxdl.data import sources

log = logging.getLogger(__name__)

PROVENANCE_FILENAME = "provenance.json"
DIFF_FILENAME = "provenance.diff"
# The checkout whose commit is recorded: the one that holds the imported jaxdl package.
CODE_ROOT = Path(__file__).resolve().parent.parent
# Training records spread evenly over the split whose bytes enter the data fingerprint.
FINGERPRINT_SAMPLE = 256
# What a resume checks (a record path each) and how the warning names it.
RESUME_CHECKS = {"code": "code", "data.fingerprint": "data fingerprint", "devices.used": "device count"}
# Record paths jaxdl-eval compares with the present; the rest (command line, time, seed) belongs to the run alone.
COMPARED = ("python", "packages", "devices", "environment", "code", "data.version", "data.fingerprint")
_NOT_COMPARED_BY_EVAL = ("devices.used", "code.root", "code.untracked")
_GIT_TIMEOUT_S = 20
# Untracked files whose content enters provenance.diff: source files, not data or outputs.
_SOURCE_SUFFIXES = (".py", ".pyx", ".sh", ".toml", ".cfg", ".yaml", ".yml", ".c", ".cc", ".h")
_MAX_UNTRACKED_DIFFED = 200
_MAX_UNTRACKED_BYTES = 1 << 20


def _git(root: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str | None:
    """stdout of `git -C root ARGS`, or None when git fails (an exit code not in `ok`) or is missing."""
    try:
        # errors="replace": a file in another encoding must not stop the run (its diff lines are then inexact).
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode in ok else None


def _new_file_patch(path: str, text: str, executable: bool) -> str:
    """The patch `git diff` writes for a new text file (made here: one git process per file costs ~25 ms)."""
    lines = text.splitlines(keepends=True)
    patch = f"diff --git a/{path} b/{path}\nnew file mode {'100755' if executable else '100644'}\n"
    if not lines:
        return patch
    patch += f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1{f',{len(lines)}' if len(lines) != 1 else ''} @@\n"
    patch += "".join(f"+{line}" for line in lines)
    return patch if text.endswith("\n") else patch + "\n\\ No newline at end of file\n"


def _untracked_diff(top: Path, paths: list[str]) -> str:
    """A patch that creates the untracked source files among `paths` (a new module is code the commit lacks)."""
    patches = []
    for path in paths[:_MAX_UNTRACKED_DIFFED]:
        file = top / path
        if file.suffix not in _SOURCE_SUFFIXES or not file.is_file() or file.stat().st_size > _MAX_UNTRACKED_BYTES:
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):  # Not text: listed in `untracked`, not patched.
            continue
        if "\r" in text:  # Line endings a hand-made patch could garble: git writes this one.
            patches.append(_git(top, "diff", "--no-index", "--binary", "--", "/dev/null", path, ok=(1,)) or "")
        else:
            patches.append(_new_file_patch(path, text, os.access(file, os.X_OK)))
    return "".join(patches)


def git_state(root: Path) -> tuple[dict | None, str]:
    """({"root", "commit", "dirty", "diff_sha256", "untracked"}, the diff) of the checkout holding `root`.

    The diff is `git diff HEAD` followed by patches creating the untracked
    (not ignored) source files, so `git apply` on the commit rebuilds the code.
    (None, "") when `root` is in no checkout or git is missing; the commit is
    None in a repository without one.
    """
    top = _git(root, "rev-parse", "--show-toplevel")
    # An install inside an ignored folder of some checkout (a .venv in a repo) is not that checkout's code.
    if top is None or _git(root, "check-ignore", "-q", str(Path(root).resolve())) is not None:
        return None, ""
    commit = _git(root, "rev-parse", "HEAD")
    commit = commit.strip() if commit else None
    # --no-ext-diff/--no-textconv: the saved diff must be one `git apply` takes, whatever the user's git config.
    diff = (_git(root, "diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv") or "") if commit else ""
    # -z: names as they are, not C-quoted.
    untracked = (_git(root, "ls-files", "-z", "--others", "--exclude-standard", "--full-name") or "").split("\0")
    untracked = [name for name in untracked if name]
    diff += _untracked_diff(Path(top.strip()), untracked)
    state = {
        "root": top.strip(),
        "commit": commit,
        "dirty": bool(diff),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None,
        "untracked": untracked[:50] + ([f"... {len(untracked) - 50} more"] if len(untracked) > 50 else []),
    }
    return state, diff


def package_versions() -> dict[str, str | None]:
    """Installed versions of jaxdl, every package it requires (extras aside), jaxlib and JAX's CUDA plugins."""
    return dict(_package_versions())


@functools.cache  # Scanning the installed distributions takes ~0.3 s; what is installed stays put in a process.
def _package_versions() -> dict[str, str | None]:
    try:
        requirements = importlib.metadata.requires("jaxdl") or []
    except importlib.metadata.PackageNotFoundError:  # Run from a checkout that was never pip-installed.
        requirements = ["jax", "flax", "optax", "orbax-checkpoint", "grain", "numpy"]
    names = ["jaxdl"]
    names += [re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r)[0] for r in requirements if "extra ==" not in r]
    names.append("jaxlib")
    # The CUDA plugins decide the GPU kernels as much as jaxlib does.
    names += sorted(
        {d.metadata["Name"] for d in importlib.metadata.distributions() if re.match(r"jax[-_]cuda", d.metadata["Name"])}
    )
    versions = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def devices(used: int | None) -> dict:
    """The devices JAX sees, how many the run's mesh uses, and the process count."""
    return {
        "platform": jax.default_backend(),
        "kind": jax.devices()[0].device_kind,
        "count": jax.device_count(),
        "local_count": jax.local_device_count(),
        "used": used,
        "process_count": jax.process_count(),
    }


def environment() -> dict[str, str | None]:
    """XLA_FLAGS and every JAX_* variable of this process."""
    names = ["XLA_FLAGS", *sorted(k for k in os.environ if k.startswith("JAX_"))]
    return {name: os.environ.get(name) for name in names}


def _update(digest, value) -> None:
    """Feeds one record value (nested dicts, arrays, strings) into `digest`."""
    if isinstance(value, Mapping):
        for key in sorted(value):
            digest.update(str(key).encode())
            _update(digest, value[key])
        return
    array = np.asarray(value)
    if array.dtype.kind in "OSUV":  # Strings and objects: their values, not numpy's padded layout.
        digest.update(repr(array.tolist()).encode())
    else:
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())


def data_fingerprint(source, split_sizes: Mapping[str, int], sample: int = FINGERPRINT_SAMPLE) -> dict:
    """A hash over the size of every split and the full content of `sample` training records.

    The records are spread evenly over the training split (all of them when it
    is smaller). A record added or removed anywhere changes the sizes; a changed
    value is seen only when its record is in the sample, which keeps this cheap
    for any dataset (256 reads).
    """
    count = len(source)
    indices = np.unique(np.linspace(0, count - 1, min(sample, count)).round().astype(np.int64))
    digest = hashlib.sha256(json.dumps(dict(split_sizes), sort_keys=True).encode())
    for index in indices:
        _update(digest, source[int(index)])
    return {"sha256": digest.hexdigest()[:16], "split_sizes": dict(split_sizes), "sampled_records": len(indices)}


def dataset_record(dataset: ml_collections.ConfigDict) -> dict:
    """The dataset's name, tfds version and fingerprint, read from freshly opened (not in-memory) sources."""
    raw = ml_collections.ConfigDict(dataset.to_dict())
    raw.cache_in_memory = False  # Only the fingerprint's few records are read.
    keys = ("train_split", "val_split", "test_split")
    splits = {dataset[k]: sources.open_split(raw, dataset[k]) for k in keys if dataset[k]}
    train = splits[dataset.train_split]
    info = getattr(train, "dataset_info", None)
    record = {"name": dataset.name, "version": str(info.version) if info is not None else None}
    if dataset.path:
        record["path"] = dataset.path
    record["fingerprint"] = data_fingerprint(train, {split: len(source) for split, source in splits.items()})
    return record


def collect(
    config: ml_collections.ConfigDict,
    *,
    devices_used: int | None,
    code_root: Path = CODE_ROOT,
    argv: list[str] | None = None,
) -> tuple[dict, str]:
    """(the provenance record, the uncommitted diff) of a run of `config` started now in this process."""
    code, diff = git_state(code_root)
    record = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": list(sys.argv if argv is None else argv),
        "host": platform.node(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "devices": devices(devices_used),
        "environment": environment(),
        "code": code,
        "data": dataset_record(config.dataset),
        "seed": config.seed,
        "config_hash": configuration.config_hash(config),
    }
    return record, diff


def read(workdir: str | Path) -> dict | None:
    """A workdir's provenance record, or None when it has none (or an unreadable one)."""
    path = Path(workdir) / PROVENANCE_FILENAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _get(record: Mapping, path: str):
    for part in path.split("."):
        if not isinstance(record, Mapping):
            return None
        record = record.get(part)
    return record


def _set(record: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        record = record.setdefault(part, {})
    record[last] = value


def current(record: Mapping) -> dict:
    """The record with the changes that resumes recorded applied: what the run's latest part ran with."""
    latest = copy.deepcopy(dict(record))
    for change in record.get("changes", []):
        for path in RESUME_CHECKS:
            if path in change:
                _set(latest, path, change[path]["to"])
    return latest


def _code_id(code: Mapping | None) -> str | None:
    if not code:
        return None
    commit = (code.get("commit") or "no commit")[:12]
    return f"{commit} + diff {code['diff_sha256'][:8]}" if code.get("dirty") else commit


def _shown(path: str, value) -> str:
    if path == "code":
        return str(_code_id(value))
    if path == "data.fingerprint":
        return str(value.get("sha256") if isinstance(value, Mapping) else value)
    return str(value)


def _same(path: str, old, new) -> bool:
    if path == "code":
        return _code_id(old) == _code_id(new)
    if path == "data.fingerprint":
        return _shown(path, old) == _shown(path, new)
    return old == new


def record_start(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    start_step: int,
    devices_used: int,
    code_root: Path = CODE_ROOT,
    argv: list[str] | None = None,
) -> dict:
    """Writes the record of a run starting at `start_step`, or, resuming one that has a record, checks it.

    A fresh start (step 0) writes provenance.json, and provenance.diff when the
    checkout is dirty. A resume compares the code, the data fingerprint and the
    device count with the record; any change is one warning line and an entry
    in the record's `changes`. Returns the record as written.
    """
    workdir = Path(workdir)
    present, diff = collect(config, devices_used=devices_used, code_root=code_root, argv=argv)
    previous = read(workdir) if start_step > 0 else None
    if previous is not None:
        return _check_resume(workdir, previous, present, diff, start_step)
    if start_step > 0:
        present["started_at_step"] = start_step  # Resuming a run made before jaxdl wrote provenance.
    (workdir / DIFF_FILENAME).unlink(missing_ok=True)  # A stale diff of an earlier start must not pass as this one.
    if diff:
        (workdir / DIFF_FILENAME).write_text(diff)
    _write(workdir, present)
    return present


def _check_resume(workdir: Path, previous: dict, present: dict, diff: str, start_step: int) -> dict:
    """Appends to `previous` what differs from the run's latest part (see RESUME_CHECKS) and warns once."""
    latest = current(previous)
    changed = {
        path: {"from": _get(latest, path), "to": _get(present, path)}
        for path in RESUME_CHECKS
        if not _same(path, _get(latest, path), _get(present, path))
    }
    if not changed:
        return previous
    change = {"step": start_step, "time": present["time"], "argv": present["argv"], **changed}
    if "code" in changed and diff:
        change["diff"] = f"provenance.change-{len(previous.get('changes', [])) + 1}.diff"
        (workdir / change["diff"]).write_text(diff)
    previous.setdefault("changes", []).append(change)
    _write(workdir, previous)
    described = ", ".join(
        f"{RESUME_CHECKS[p]} {_shown(p, c['from'])} -> {_shown(p, c['to'])}" for p, c in changed.items()
    )
    log.warning(
        "resuming %s at step %d with a different %s (recorded in %s)",
        workdir,
        start_step,
        described,
        PROVENANCE_FILENAME,
    )
    return previous


def _write(workdir: Path, record: dict) -> None:
    path = workdir / PROVENANCE_FILENAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=2, default=str) + "\n")
    temporary.replace(path)  # Never a half-written record, whatever kills the process.


def _flatten(value, prefix: str) -> dict:
    if isinstance(value, Mapping):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}"))
        return flat or {prefix: {}}
    return {prefix: value}


def differences(recorded: Mapping, present: Mapping) -> list[str]:
    """One line per compared field (see COMPARED) where the run's record and `present` disagree."""
    recorded = current(recorded)
    lines = []
    for path in COMPARED:
        old, new = _flatten(_get(recorded, path), path), _flatten(_get(present, path), path)
        for key in sorted(old.keys() | new.keys()):
            if key.startswith(_NOT_COMPARED_BY_EVAL) or old.get(key) == new.get(key):
                continue
            lines.append(f"{key}: {old.get(key)} (run) -> {new.get(key)} (now)")
    return lines


def present_differences(workdir: str | Path, *, code_root: Path = CODE_ROOT) -> list[str]:
    """How this process's environment differs from the one `workdir` was trained in, one line each."""
    config = configuration.read_config(Path(workdir) / "config.json")
    recorded = read(workdir)
    if recorded is None:
        return [f"{workdir} holds no readable {PROVENANCE_FILENAME} (trained before jaxdl recorded provenance)"]
    try:
        present, _ = collect(config, devices_used=None, code_root=code_root)
    except Exception as error:  # The data is unreadable here: compare the rest.
        lines = [f"data: cannot be read here to fingerprint ({type(error).__name__}: {str(error)[:200]})"]
        present = {"python": platform.python_version(), "packages": package_versions(), "devices": devices(None)}
        present.update(environment=environment(), code=git_state(code_root)[0], data=recorded.get("data"))
        return lines + differences(recorded, present)
    return differences(recorded, present)
