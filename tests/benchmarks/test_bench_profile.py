"""The decode-step profiler's pure part: how onnxruntime's profile events become per-step figures
(only the last `steps` session runs count, times per operator type and node, nodes per step)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_profile


def _run(ts: int, dur: int) -> dict[str, object]:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _node(name: str, op: str, ts: int, dur: int) -> dict[str, object]:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


EVENTS = [
    _run(0, 1000),  # a warm-up run: its nodes must not count
    _node("warm", "MatMulNBits", 10, 900),
    _run(2000, 1000),
    _node("head", "MatMulNBits", 2010, 600),
    _node("corr", "MatMul", 2700, 100),
    {"cat": "Node", "name": "head_fence_before", "ts": 2005, "dur": 0, "args": {"op_name": "MatMulNBits"}},
    _run(4000, 2000),
    _node("head", "MatMulNBits", 4010, 1400),
    _node("corr", "MatMul", 5500, 300),
]


def test_summarise_averages_the_last_runs_per_step() -> None:
    """Two profiled steps: run time, kernel time and each operator's time are per step averages in ms;
    the warm-up run and non-kernel events are left out; node counts are per step."""
    p = bench_profile.summarise(EVENTS, steps=2, top=1)
    assert p.run_ms == pytest.approx(1.5)
    assert p.kernel_ms == pytest.approx(1.2)
    assert p.by_op == pytest.approx({"MatMulNBits": 1.0, "MatMul": 0.2})
    assert list(p.by_op) == ["MatMulNBits", "MatMul"]  # slowest first
    assert p.op_nodes == {"MatMulNBits": 1, "MatMul": 1}
    assert p.nodes == 2
    assert p.top_nodes == [("head", pytest.approx(1.0))]


def test_summarise_says_when_the_profile_is_too_short() -> None:
    """Asking for more steps than the profile ran is a clear error, not a silent average."""
    with pytest.raises(ValueError, match="3 session runs, fewer than the 4"):
        bench_profile.summarise(EVENTS, steps=4)


def test_format_profile_prints_shares_of_the_kernel_time() -> None:
    """The printed block names each operator with its ms per step, share and node count."""
    text = bench_profile.format_profile("title", bench_profile.summarise(EVENTS, steps=2))
    assert text.splitlines()[0] == "title"
    assert "MatMulNBits" in text and "83.3%" in text and "x1" in text
    assert "in kernels 1.20 ms (80%), 2 nodes" in text
