"""The RAM an ONNX build needs, stated before it starts: measured peaks, fitted per billion parameters.

`benchmarks/bench_build_memory.py` builds checkpoints of several sizes (tiny, the default 135M, a ~0.4B
Qwen2-shaped one) at each dtype and fits the peak resident memory of the build's process (ru_maxrss: its own
memory and the mapped checkpoint and ONNX files it reads, which must stay in RAM while in use) as a straight
line: libraries + GiB per billion parameters. The build prints that estimate for its checkpoint beside the
machine's memory, and records both in build_report.json, so a 7-8B build on a machine that cannot hold it
says so before the export runs, not by being killed an hour later. A quantised build starts from the fp32
export, so it needs at least the fp32 figure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

GIB = 1024**3
# (libraries GiB, GiB per billion parameters), least squares over the peaks benchmarks/bench_build_memory.py
# measured (tiny, 135M, 0.4B; README, "RAM a build needs"); a test holds the README to these figures.
BUILD_MEMORY_FIT: dict[str, tuple[float, float]] = {
    "float32": (0.6, 9.1),
    "float16": (0.8, 7.1),
}


def parameter_count(checkpoint: Path) -> int:
    """Parameters in the checkpoint's safetensors files, read from their headers (no weight is loaded);
    0 when it has none."""
    from safetensors import safe_open

    total = 0
    for shard in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(shard), "np") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                count = 1
                for dim in f.get_slice(name).get_shape():
                    count *= int(dim)
                total += count
    return total


def machine_memory_gib() -> float:
    """Physical memory of this machine in GiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def estimate(checkpoint: Path, dtype: str, quantize: str) -> dict[str, Any] | None:
    """The build's memory entry (parameters, estimated peak GiB, machine GiB, enough), or None when the
    checkpoint's parameters cannot be counted (no safetensors files)."""
    parameters = parameter_count(checkpoint)
    if not parameters:
        return None
    libraries, per_billion = BUILD_MEMORY_FIT[dtype]
    need = libraries + per_billion * parameters / 1e9
    machine = machine_memory_gib()
    return {
        "parameters": parameters,
        "estimated_peak_gib": round(need, 2),
        "gib_per_billion_parameters": per_billion,
        "at_least": quantize != "none",
        "machine_gib": round(machine, 1),
        "enough": need <= machine,
    }


def describe(entry: dict[str, Any], dtype: str) -> str:
    """One line for the build's progress: what it needs, what the machine has, what to do if short."""
    need, machine = entry["estimated_peak_gib"], entry["machine_gib"]
    line = (
        f"{entry['parameters'] / 1e9:.2f}B parameters at {dtype}: this build needs "
        f"{'at least ' if entry['at_least'] else ''}~{need:.1f} GiB of RAM at its peak "
        f"({entry['gib_per_billion_parameters']:g} GiB per billion parameters, measured); "
        f"this machine has {machine:.1f} GiB"
    )
    if not entry["enough"]:
        line += (
            " - likely too little: the build may be killed for memory"
            + ("; --dtype float16 needs about half" if dtype == "float32" else "")
            + " (see the README's build memory figures)"
        )
    return line
