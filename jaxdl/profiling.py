"""Where a step's time goes: a profiler trace summed by kind of XLA operation.

`summarize(trace_dir, hlo_text)` reads the newest trace under
`trace_dir` (what `runlog.StepProfiler` or `jax.profiler.trace` writes), keeps
the events of the compiled module whose optimised HLO text is `hlo_text`
(`compiled.as_text()`), and sums their durations per step by kind:

  conv forward / conv input gradient / conv weight gradient, conv layout copies
  (what XLA adds, with no op name, to give a conv its operands in the layout it
  needs: for XLA's dW the input and the cotangent with batch and channels
  swapped), matmul,
  data movement (transposes, copies, pads, slices, concatenations), reductions,
  elementwise, collectives, other.

Each kind is split into forward, backward and other by the `jvp(...)` /
`transpose(jvp(...))` in the op names JAX records in the HLO metadata. "other"
is the optimizer update and what XLA made without an op name: layout transposes
and copies, with any forward work it fused into them to recompute. The heaviest
single operations are listed too.

Times are the operations' own durations as the profiler recorded them. XLA:CPU
may run independent operations side by side, so their sum can exceed the step's
wall time; the table gives both. With several devices in the process, each
device's operations are counted (collectives include the time a device waits
for the others).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from jaxdl.errors import UserError

KINDS = (
    "conv forward",
    "conv input gradient",
    "conv weight gradient",
    "conv layout copies",
    "matmul",
    "data movement",
    "reductions",
    "elementwise",
    "collectives",
    "other",
)
PHASES = ("forward", "backward", "other")
_CONV_KINDS = KINDS[:3]

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"(?:^|\s)([a-z][a-z0-9\-]*)\(")
_SHAPE = re.compile(r"^[a-z0-9]+\[([\d,]*)\]")
_MOVEMENT = {
    "transpose",
    "copy",
    "bitcast",
    "reshape",
    "broadcast",
    "slice",
    "dynamic-slice",
    "dynamic-update-slice",
    "pad",
    "concatenate",
    "reverse",
    "gather",
    "scatter",
    "parameter",
    "constant",
    "tuple",
    "get-tuple-element",
    "iota",
    "bitcast-convert",
    "convert",
}
_COLLECTIVES = {
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "all-reduce-start",
    "all-reduce-done",
    "all-gather-start",
    "all-gather-done",
    "collective-permute-start",
    "collective-permute-done",
}


class Op(NamedTuple):
    """One instruction of the optimised HLO: its kind, phase and the JAX op name it came from."""

    kind: str
    phase: str
    op_name: str


class StepProfile(NamedTuple):
    """Milliseconds per step by (kind, phase), the heaviest operations, and the trace it came from."""

    ms: dict[tuple[str, str], float]
    top: list[tuple[str, str, str, float]]  # (HLO name, kind, JAX op name, ms per step)
    steps: int
    trace: Path

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())


def _phase(op_name: str) -> str:
    if "transpose(" in op_name:  # JAX names the backward pass transpose(jvp(...)).
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "other"


def _window_exceeds_output(line: str, shape: str) -> bool:
    """Whether a convolution's window is larger than its output in a spatial dimension: XLA's dW form."""
    window = re.search(r"window=\{size=([\dx]+)", line)
    labels = re.search(r"dim_labels=\w+_\w+->(\w+)", line)
    dims = _SHAPE.match(shape)
    if not (window and labels and dims):
        return False
    sizes = [int(s) for s in window.group(1).split("x")]
    out = [int(d) for d in dims.group(1).split(",") if d]
    spatial = [out[i] for i, label in enumerate(labels.group(1)) if label.isdigit() and i < len(out)]
    return any(w > o for w, o in zip(sizes, spatial, strict=False))


def _conv_kind(line: str, op_name: str) -> str:
    """Which of the three conv kinds a convolution instruction (the text after its '=') is."""
    if _phase(op_name) == "forward":
        return "conv forward"
    if _window_exceeds_output(line, line.split(" ", 1)[0]):
        return "conv weight gradient"
    if _phase(op_name) == "backward":
        return "conv input gradient"
    # XLA rewrites a weight-gradient conv into a plain one and drops its op name; forward and input-gradient
    # convs keep theirs.
    return "conv weight gradient"


def _kind_of_opcodes(opcodes: set[str]) -> str:
    """The kind of an instruction ({its opcode}) or of a fusion (the opcodes it fuses); a conv's is refined later."""
    if "convolution" in opcodes:
        return "conv forward"
    if "dot" in opcodes:
        return "matmul"
    if opcodes & _COLLECTIVES:
        return "collectives"
    if opcodes & {"reduce", "reduce-window", "select-and-scatter"}:
        return "reductions"
    if opcodes <= _MOVEMENT:
        return "data movement"
    if opcodes & {"while", "call", "conditional", "custom-call", "sort", "rng", "rng-bit-generator"}:
        return "other"
    return "elementwise"


def _op_name(rest: str) -> str:
    match = re.search(r'op_name="([^"]*)"', rest)
    return match.group(1) if match else ""


def classify(hlo_text: str) -> dict[str, Op]:
    """Every instruction of an optimised HLO module by name, with its kind, phase and JAX op name.

    A fusion's kind is that of what it fuses: a convolution or a dot makes it a
    conv or a matmul; else a collective, a reduction, pure data movement, or
    elementwise work. Without an op name of its own it takes its convolution's,
    else its root's. A convolution whose op name is in `jvp(...)` only is a
    forward conv; else one whose window is larger than its output is a weight
    gradient (XLA's form of dW: the window is the output cotangent); else one
    inside `transpose(...)` is an input gradient; one with no op name is a
    weight gradient XLA rewrote (it drops their names).
    """
    opcodes: dict[str, set[str]] = defaultdict(set)
    convs: dict[str, str] = {}  # computation -> the first convolution instruction in it (the text after '=')
    roots: dict[str, str] = {}  # computation -> its ROOT instruction's op name
    instructions: list[tuple[str, str, str]] = []  # (name, opcode, the text after '=')
    current = ""
    for line in hlo_text.splitlines():
        if line.rstrip().endswith("{") and " = " not in line:
            match = _COMPUTATION.match(line.strip())
            current = match.group(1) if match else ""
            continue
        match = _INSTRUCTION.match(line)
        opcode = _OPCODE.search(match.group(2)) if match and current else None
        if opcode:
            opcodes[current].add(opcode.group(1))
            if opcode.group(1) == "convolution":
                convs.setdefault(current, match.group(2))
            if line.lstrip().startswith("ROOT "):
                roots[current] = _op_name(match.group(2))
            instructions.append((match.group(1), opcode.group(1), match.group(2)))
    ops = {}
    for name, opcode, rest in instructions:
        op_name = _op_name(rest)
        if opcode == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", rest)
            inner = called.group(1) if called else ""
            kind = _kind_of_opcodes(opcodes.get(inner, set()) - {"parameter"} or {"parameter"})
            conv = convs.get(inner)
            op_name = op_name or (_op_name(conv) if conv else roots.get(inner, ""))
        else:
            kind, conv = _kind_of_opcodes({opcode}), rest
        if kind == "conv forward":
            kind = _conv_kind(conv, op_name)
        phase = "backward" if kind == "conv weight gradient" else _phase(op_name)
        ops[name] = Op(kind, phase, op_name)
    # What XLA made, with no op name, to feed a convolution its operands in the layout it needs (for dW:
    # the input and cotangent with batch and channels swapped), with any work it fused in to recompute.
    for name, opcode, rest in instructions:
        if ops[name].kind in _CONV_KINDS:
            start = rest.index(opcode + "(") + len(opcode) + 1
            for operand in re.findall(r"%([\w.\-]+)", rest[start : rest.find(")", start)]):
                feeder = ops.get(operand)
                if feeder and not feeder.op_name and feeder.kind in ("data movement", "elementwise"):
                    ops[operand] = Op("conv layout copies", feeder.phase, "")
    return ops


def _module_name(hlo_text: str) -> str:
    match = re.match(r"\s*HloModule\s+([\w.\-]+)", hlo_text)
    if not match:
        raise UserError("the HLO text does not start with 'HloModule NAME': pass compiled.as_text()")
    return match.group(1)


def _events(trace: Path) -> Iterable[tuple[str, str, str, float]]:
    """(HLO module, run id, HLO op, duration in ms) of every XLA operation the trace recorded."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(str(trace))
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    module, run = str(stats.get("hlo_module", "")), str(stats.get("run_id", ""))
                    yield module, run, str(stats["hlo_op"]), event.duration_ns / 1e6


def summarize(trace_dir: str | Path, hlo_text: str, top: int = 10) -> StepProfile:
    """The newest trace under `trace_dir`, summed per step by kind and phase for the module of `hlo_text`.

    A step is one execution of the module (one run id). Executions the trace
    caught only in part (the trace started or stopped while they ran) are left
    out: those with fewer operations than the fullest one.
    """
    module = _module_name(hlo_text)
    traces = sorted(Path(trace_dir).rglob("*.xplane.pb"), key=lambda path: path.stat().st_mtime)
    if not traces:
        raise UserError(f"no profiler trace (*.xplane.pb) under {trace_dir}")
    ops = classify(hlo_text)
    runs: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for event_module, run, name, duration in _events(traces[-1]):
        if event_module == module:
            runs[run].append((name, duration))
    if not runs:
        raise UserError(f"the trace {traces[-1]} holds no operation of the module {module}: was it profiled?")
    unknown = Op("other", "other", "")  # An operation the HLO text does not name (none seen so far).
    fullest = max(len(events) for events in runs.values())
    complete = [events for events in runs.values() if len(events) == fullest]
    steps = len(complete)
    ms: dict[tuple[str, str], float] = defaultdict(float)
    per_op: dict[str, float] = defaultdict(float)
    for events in complete:
        for name, duration in events:
            op = ops.get(name, unknown)
            ms[op.kind, op.phase] += duration / steps
            per_op[name] += duration / steps
    heaviest = sorted(per_op.items(), key=lambda item: -item[1])[:top]
    rows = [(name, (op := ops.get(name, unknown)).kind, op.op_name, t) for name, t in heaviest]
    return StepProfile(dict(ms), rows, steps, traces[-1])


def format_profile(profile: StepProfile, step_ms: float | None = None) -> str:
    """A table of ms per step by kind (forward / backward / other / total / share), then the heaviest ops."""
    total = profile.total_ms
    header = f"{'kind':<22}{'forward':>10}{'backward':>10}{'other':>10}{'total':>10}{'share':>8}"
    lines = [header, "-" * len(header)]
    for kind in KINDS:
        cells = [profile.ms.get((kind, phase), 0.0) for phase in PHASES]
        if sum(cells) == 0:
            continue
        share = 100 * sum(cells) / total
        lines.append(f"{kind:<22}" + "".join(f"{c:>10.1f}" for c in cells) + f"{sum(cells):>10.1f}{share:>7.1f}%")
    sums = [sum(t for (_, phase), t in profile.ms.items() if phase == p) for p in PHASES]
    lines.append("-" * len(header))
    lines.append(f"{'sum of operations':<22}" + "".join(f"{c:>10.1f}" for c in sums) + f"{total:>10.1f}")
    if step_ms is not None:
        lines.append(f"step wall time {step_ms:.1f} ms (operations may overlap on several threads)")
    lines.append(f"ms per step over {profile.steps} profiled step(s); heaviest operations:")
    for name, kind, op_name, t in profile.top:
        lines.append(f"  {t:>9.1f}  {kind:<21} {name}  {op_name[-70:]}")
    return "\n".join(lines)
