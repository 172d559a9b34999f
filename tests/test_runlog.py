"""Tests for jaxdl.runlog and experiments/plot_curves.py."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jaxdl.runlog import (
    MetricWriter,
    ProgressBar,
    format_metrics,
    parameter_table,
    read_metrics,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PLOT_SCRIPT = REPO_ROOT / "experiments" / "plot_curves.py"


def _crc32c_table() -> list[int]:
    """Builds the lookup table for CRC-32C (Castagnoli, reflected polynomial)."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """Computes the masked CRC-32C used by the TFRecord framing."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(path: Path) -> list[event_pb2.Event]:
    """Parses one TFRecord event file, checking both CRCs of every record."""
    data = path.read_bytes()
    events = []
    offset = 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        assert length_crc == _masked_crc32c(header)
        payload = data[offset + 12 : offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert payload_crc == _masked_crc32c(payload)
        event = event_pb2.Event()
        event.ParseFromString(payload)
        events.append(event)
        offset += 16 + length
    return events


def _event_files(workdir: Path) -> list[Path]:
    """Lists TensorBoard event files of a workdir in creation order."""
    return sorted((workdir / "tensorboard").glob("events.out.tfevents.*"))


def _scalars(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Collects (step, value) pairs per scalar tag across all event files."""
    result: dict[str, list[tuple[int, float]]] = {}
    for path in _event_files(workdir):
        for event in _read_events(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    result.setdefault(value.tag, []).append((event.step, value.simple_value))
    return result


def _load_plot_module() -> ModuleType:
    """Imports experiments/plot_curves.py, which is not inside a package."""
    spec = importlib.util.spec_from_file_location("plot_curves", PLOT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_jaxdl_module_shadows_the_standard_library() -> None:
    """No module of jaxdl is named like a standard-library module (jaxdl/logging.py once was)."""
    import pkgutil
    import sys

    import jaxdl

    names = {info.name.rsplit(".", 1)[-1] for info in pkgutil.walk_packages(jaxdl.__path__, "jaxdl.")}
    assert not names & set(sys.stdlib_module_names), names & set(sys.stdlib_module_names)


def test_jsonl_round_trip_with_nonfinite_values(tmp_path: Path) -> None:
    """Lines are strict JSON and NaN/inf survive a write/read round trip."""
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"train/loss": jnp.float32(0.5), "count": np.int64(7)})
        writer.write(2, {"train/loss": float("nan"), "val/loss": math.inf, "lr": -math.inf})

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2

    def reject_constant(name: str) -> float:
        raise AssertionError(f"non-standard JSON constant {name}")

    raw = [json.loads(line, parse_constant=reject_constant) for line in lines]
    assert raw[0] == {"step": 1, "train/loss": 0.5, "count": 7}
    assert isinstance(raw[0]["count"], int)
    assert raw[1] == {"step": 2, "train/loss": "nan", "val/loss": "inf", "lr": "-inf"}

    records = read_metrics(tmp_path)
    assert records[0] == raw[0]
    assert math.isnan(records[1]["train/loss"])
    assert records[1]["val/loss"] == math.inf
    assert records[1]["lr"] == -math.inf


def test_write_rejects_non_scalars_and_reserved_step(tmp_path: Path) -> None:
    """Arrays, a "step" metric and writes after close are rejected."""
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(ValueError):
            writer.write(1, {"x": np.zeros(3)})
        with pytest.raises(ValueError):
            writer.write(1, {"step": 3.0})
    with pytest.raises(ValueError):
        writer.write(2, {"x": 1.0})


def test_reopen_appends(tmp_path: Path) -> None:
    """Reopening an existing workdir appends instead of overwriting."""
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"loss": 1.0})
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write(2, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_lines_are_flushed_before_close(tmp_path: Path) -> None:
    """Each line reaches the file immediately, not only on close."""
    writer = MetricWriter(tmp_path, tensorboard=False)
    writer.write(3, {"loss": 0.25})
    # A crash now must not lose the line, so it has to be on disk already.
    assert read_metrics(tmp_path) == [{"step": 3, "loss": 0.25}]
    writer.close()


def test_torn_last_line_is_ignored_and_repaired(tmp_path: Path) -> None:
    """A partial last line from a crash is skipped on read and removed on reopen."""
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write(2, {"loss": 0.5})
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    """Corruption before the last line raises with the line number."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_metrics(tmp_path)


def test_read_metrics_missing_file(tmp_path: Path) -> None:
    """A workdir without metrics.jsonl raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(tmp_path)


def test_truncate_after_drops_stale_steps(tmp_path: Path) -> None:
    """Resuming from an earlier checkpoint removes stale lines and purges TB."""
    with MetricWriter(tmp_path) as writer:
        for step in range(1, 11):
            writer.write(step, {"train/loss": 1.0 / step})

    # Resume from a checkpoint at step 5 and redo steps 6 and 7.
    with MetricWriter(tmp_path) as writer:
        writer.truncate_after(5)
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
        writer.write(6, {"train/loss": 0.0})
        writer.write(7, {"train/loss": 0.0})

    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert records[5]["train/loss"] == 0.0
    assert not (tmp_path / "metrics.jsonl.tmp").exists()

    # The resumed event file starts with a purge marker hiding TB points >= 6.
    files = _event_files(tmp_path)
    assert len(files) == 2
    resumed = _read_events(files[1])
    starts = [e for e in resumed if e.HasField("session_log")]
    assert starts and starts[0].step == 6
    assert starts[0].session_log.status == event_pb2.SessionLog.START


def test_truncate_after_drops_a_last_line_torn_by_a_kill(tmp_path: Path) -> None:
    """A kill -9 in the middle of a write leaves half a line; the resume drops it instead of failing."""
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        for step in range(1, 4):
            writer.write(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 4, "lo')
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.truncate_after(3)
        writer.write(4, {"loss": 40.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_truncate_after_on_open_writer_keeps_appending(tmp_path: Path) -> None:
    """Truncating a writer in use keeps both files consistent."""
    with MetricWriter(tmp_path) as writer:
        for step in range(1, 5):
            writer.write(step, {"loss": float(step)})
        writer.truncate_after(2)
        writer.write(3, {"loss": 30.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]
    # Reopened TB writer must not overwrite the first event file.
    assert len(_event_files(tmp_path)) == 2
    assert (3, 30.0) in _scalars(tmp_path)["loss"]


def test_tensorboard_event_file_contains_scalars_and_text(tmp_path: Path) -> None:
    """Scalars and text land in a valid TFRecord event file."""
    with MetricWriter(tmp_path) as writer:
        writer.write_text("config", "lr: 0.1")
        writer.write(10, {"train/loss": 0.75, "train/accuracy": 0.5})
        writer.write(20, {"train/loss": 0.25, "val/loss": 0.375})

    assert _event_files(tmp_path)
    scalars = _scalars(tmp_path)
    assert scalars["train/loss"] == [(10, 0.75), (20, 0.25)]
    assert scalars["train/accuracy"] == [(10, 0.5)]
    assert scalars["val/loss"] == [(20, 0.375)]

    texts = [
        value.tensor.string_val[0].decode()
        for path in _event_files(tmp_path)
        for event in _read_events(path)
        for value in event.summary.value
        if value.tag.startswith("config")
    ]
    assert texts == ["lr: 0.1"]


def test_tensorboard_output_does_not_import_torch(tmp_path: Path) -> None:
    """A training process's TensorBoard writer leaves PyTorch unloaded (1.9 s a start), yet importable."""
    pytest.importorskip("torch")  # tensorboardX imports it only where it is installed.
    code = (
        "import sys\n"
        "from jaxdl.runlog import MetricWriter\n"
        f"writer = MetricWriter({str(tmp_path)!r})\n"
        "writer.write(1, {'loss': 0.5}); writer.close()\n"
        "assert 'torch' not in sys.modules, 'tensorboardX imported torch'\n"
        "import torch\n"
        "print(float(torch.ones(1).sum()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1.0"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_disabled_writes_only_jsonl(tmp_path: Path) -> None:
    """tensorboard=False creates no event files."""
    with MetricWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, {"loss": 1.0})
        writer.write_text("config", "x")
    assert not (tmp_path / "tensorboard").exists()
    assert (tmp_path / "metrics.jsonl").exists()


def test_disabled_writer_writes_nothing(tmp_path: Path) -> None:
    """enabled=False creates nothing on disk."""
    workdir = tmp_path / "run"
    with MetricWriter(workdir, enabled=False) as writer:
        writer.write(1, {"loss": 1.0})
        writer.write_text("config", "x")
        writer.truncate_after(0)
        writer.flush()
    assert not workdir.exists()


def test_parameter_table_lists_leaves_and_totals() -> None:
    """The table lists every leaf with its count and the correct totals."""
    params = {
        "params": {
            "conv_0": {"kernel": jnp.zeros((3, 3, 1, 8)), "bias": jnp.zeros((8,))},
            "dense": {
                "kernel": jax.ShapeDtypeStruct((1000, 10), jnp.bfloat16),
                "bias": np.zeros((10,), np.float32),
            },
        }
    }
    table = parameter_table(params)
    lines = table.splitlines()
    rows = {line.split()[0]: line for line in lines}

    assert "(3, 3, 1, 8)" in rows["params/conv_0/kernel"]
    assert rows["params/conv_0/kernel"].split()[-2:] == ["72", "288"]
    assert "float32" in rows["params/conv_0/bias"]
    assert "bfloat16" in rows["params/dense/kernel"]
    assert "10,000" in rows["params/dense/kernel"]
    # 72 + 8 + 10000 + 10 parameters; bytes: 4 * 90 + 2 * 10000.
    total = rows["total"]
    assert "10,090" in total
    assert "20,360" in total

    # Columns are aligned: every data row has the same width as the header rule.
    rule_width = len(lines[1])
    assert all(len(line) == rule_width for line in lines if line.startswith("params/"))
    count_col = lines[0].index("count") + len("count")
    assert all(line[count_col - 1].isdigit() for line in lines if line.startswith("params/"))


def test_format_metrics() -> None:
    """Floats get 4 significant digits and integers stay exact."""
    text = format_metrics({"loss": jnp.float32(0.123456), "step": 12345, "acc": 0.98765})
    assert text == "loss=0.1235 step=12345 acc=0.9877"
    assert format_metrics({"loss": float("nan")}) == "loss=nan"


def test_progress_bar_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """The bar jumps to absolute steps and renders on stderr with the postfix."""
    bar = ProgressBar(total_steps=100, initial_step=10, desc="train")
    bar.update(20, {"loss": 0.123456})
    bar.update(60)
    assert bar.step == 60
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "train" in captured.err
    assert "60/100" in captured.err
    assert "loss=0.1235" in captured.err


def test_progress_bar_disabled_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    """A disabled bar prints nothing."""
    bar = ProgressBar(total_steps=100, enabled=False)
    bar.update(5, {"loss": 1.0})
    bar.write("hello")
    assert bar.step is None
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def _make_run(workdir: Path, scale: float) -> None:
    """Writes a small synthetic run with separate train and val lines."""
    with MetricWriter(workdir, tensorboard=False) as writer:
        for step in range(0, 101, 10):
            writer.write(
                step,
                {
                    "train/loss": scale / (step + 1),
                    "train/accuracy": 1.0 - scale / (step + 2),
                    "lr": 0.1,
                    "steps_per_sec": 50.0,
                },
            )
            if step % 20 == 0:
                writer.write(
                    step,
                    {
                        "val/loss": scale / (step + 1) + 0.1,
                        "val/accuracy": 0.9 - scale / (step + 2),
                    },
                )


def _png_size(path: Path) -> tuple[int, int]:
    """Reads (width, height) from a PNG's IHDR chunk after checking its signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_curves_makes_png(tmp_path: Path) -> None:
    """Two runs produce a PNG whose size matches the subplot layout."""
    plot = _load_plot_module()
    run_a, run_b = tmp_path / "run_a", tmp_path / "run_b"
    _make_run(run_a, 1.0)
    _make_run(run_b, 2.0)

    out = plot.plot_curves([run_a, run_b])
    assert out == run_a / "curves.png"
    assert out.stat().st_size > 1000
    # Auto-detection finds loss and accuracy but not the bare lr/steps_per_sec keys.
    assert plot._detect_metrics([read_metrics(run_a)]) == ["loss", "accuracy"]
    expected = (
        round(2 * plot.SUBPLOT_WIDTH_IN * plot.DPI),
        round(plot.SUBPLOT_HEIGHT_IN * plot.DPI),
    )
    assert _png_size(out) == expected

    single = plot.plot_curves([run_a], tmp_path / "sub" / "loss.png", metrics=["loss"])
    assert _png_size(single) == (round(plot.SUBPLOT_WIDTH_IN * plot.DPI), expected[1])


def test_plot_curves_cli(tmp_path: Path) -> None:
    """The CLI plots chosen metrics, including a bare key, and prints the path."""
    run = tmp_path / "run"
    _make_run(run, 1.0)
    out = tmp_path / "out.png"
    result = subprocess.run(
        [
            sys.executable,
            str(PLOT_SCRIPT),
            str(run),
            "--out",
            str(out),
            "--metrics",
            "accuracy,loss,lr",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert _png_size(out)[0] > 0


def test_plot_curves_missing_metrics_file(tmp_path: Path) -> None:
    """A workdir without metrics.jsonl fails with one line and exit code 2."""
    plot = _load_plot_module()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot.plot_curves([empty])
    assert plot.main([str(empty)]) == 2

    result = subprocess.run(
        [sys.executable, str(PLOT_SCRIPT), str(empty)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "metrics.jsonl" in result.stderr
    assert not (empty / "curves.png").exists()
