"""Where a decode step's time goes, per operator type, at 1 row and at N rows (onnxruntime's profiler).

    python benchmarks/bench_profile.py ENGINE_DIR [ENGINE_DIR ...] [--rows 1 4 8] [--threads 1] [--steps 32]

An engine directory is a repository's `<model>/1/engine` (or any `tritonform build` output). For each
directory and each --rows value the script starts that many sequences in one continuous batch (the
engine's own DecodeBatch, as the served model runs them), runs a few warm-up steps, then --steps decode
steps with onnxruntime's profiler on, and prints per step: the session run time, the time inside
kernels, the nodes run, each operator type's time and share of the kernel time, and the slowest
nodes. A served model with 8 streams runs two decode lanes of 4 rows on 1 thread each
(`model_repo/runtime/scheduler.py`), so `--rows 1 4 --threads 1` shows what its steps cost.

Times are from a shared machine: compare shares and ratios within one run, not absolute times; the
load average is printed with each result.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a short story about a robot who learns to paint landscapes at sunset."
KERNEL_SUFFIX = "_kernel_time"


@dataclass
class StepProfile:
    """Per decode step averages from one profile: what `summarise` computes from the events."""

    steps: int
    run_ms: float
    kernel_ms: float
    nodes: float
    by_op: dict[str, float] = field(default_factory=dict)  # op type -> ms per step
    op_nodes: dict[str, int] = field(default_factory=dict)  # op type -> nodes per step
    top_nodes: list[tuple[str, float]] = field(default_factory=list)  # (node, ms per step)


def summarise(events: list[dict[str, Any]], steps: int, top: int = 8) -> StepProfile:
    """Average the last `steps` session runs of an onnxruntime profile (its JSON events) per step:
    run time, kernel time, nodes, time by operator type and the `top` slowest nodes."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(runs) < steps:
        raise ValueError(f"the profile holds {len(runs)} session runs, fewer than the {steps} asked for")
    chosen = runs[-steps:]
    start, end = chosen[0]["ts"], chosen[-1]["ts"] + chosen[-1]["dur"]
    by_op: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith(KERNEL_SUFFIX) or not start <= e["ts"] <= end:
            continue
        op = str(e.get("args", {}).get("op_name", "?"))
        by_op[op] += e["dur"]
        by_node[name[: -len(KERNEL_SUFFIX)]] += e["dur"]
        count[op] += 1
    per_step = 1000.0 * steps  # µs in the profile -> ms per step
    return StepProfile(
        steps=steps,
        run_ms=sum(r["dur"] for r in chosen) / per_step,
        kernel_ms=sum(by_op.values()) / per_step,
        nodes=sum(count.values()) / steps,
        by_op={op: d / per_step for op, d in by_op.most_common()},
        op_nodes={op: c // steps for op, c in count.items()},
        top_nodes=[(n, d / per_step) for n, d in by_node.most_common(top)],
    )


def format_profile(title: str, p: StepProfile, ops: int = 12) -> str:
    """The printed block for one profile: totals, then operator types by time, then the slowest nodes."""
    lines = [
        title,
        f"  per step: session run {p.run_ms:.2f} ms, in kernels {p.kernel_ms:.2f} ms "
        f"({p.kernel_ms / p.run_ms:.0%}), {p.nodes:.0f} nodes",
    ]
    for op, ms in list(p.by_op.items())[:ops]:
        share = ms / p.kernel_ms if p.kernel_ms else 0.0
        lines.append(f"    {op:<34}{ms:8.3f} ms {share:6.1%}  x{p.op_nodes.get(op, 0)}")
    lines.append("  slowest nodes:")
    lines += [f"    {name[:58]:<58}{ms:8.3f} ms" for name, ms in p.top_nodes]
    return "\n".join(lines)


def profile_engine(engine_dir: Path, rows: int, threads: int, steps: int, workdir: Path) -> StepProfile:
    """Profile `steps` decode steps of `rows` sequences on a session like the engine's own."""
    import onnxruntime as ort

    from model_repo.runtime.engine import Engine
    from model_repo.runtime.sampling import SamplingParams

    base = Engine.load(engine_dir, num_threads=threads, allow_spinning=True, spin_only_in_runs=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")  # the served model's setting:
    opts.add_session_config_entry("session.force_spinning_stop", "1")  # threads spin inside a run only
    opts.enable_profiling = True
    opts.profile_file_prefix = str(workdir / f"r{rows}")
    session = ort.InferenceSession(
        str(engine_dir / base.metadata.onnx_file), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    engine = Engine(engine_dir, base.metadata, session, base.tokenizer, threads)
    batch = engine.new_batch()
    params = SamplingParams(max_tokens=steps + 64, ignore_eos=True)
    for r in range(rows):
        batch.add(str(r), engine.encode(f"Request {r}. {PROMPT}"), params)
    for _ in range(4):  # warm-up: the first steps allocate
        batch.step()
    for _ in range(steps):
        batch.step()
    path = Path(session.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    return summarise(events, steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Example: bench_profile.py REPO/llm/1/engine --rows 1 8"
    )
    parser.add_argument("engines", nargs="+", type=Path, help="engine directories (<repo>/<model>/1/engine)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="sequences per step (1 8)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (1: a decode lane's)")
    parser.add_argument("--steps", type=int, default=32, help="profiled decode steps (32)")
    args = parser.parse_args()
    for path in args.engines:
        if not (path / "generation.json").is_file():
            parser.error(
                f"{path} is not an engine directory (no generation.json); give <repo>/<model>/1/engine"
            )
    if args.steps < 1 or args.threads < 1 or min(args.rows) < 1:
        parser.error("--steps, --threads and --rows must be >= 1")
    with tempfile.TemporaryDirectory(prefix="tritonform-profile-") as tmp:
        for path in args.engines:
            for rows in args.rows:
                started = time.perf_counter()
                p = profile_engine(path, rows, args.threads, args.steps, Path(tmp))
                title = (
                    f"{path}: {rows} row(s), {args.threads} thread(s), {args.steps} steps "
                    f"(load average {os.getloadavg()[0]:.1f}, {time.perf_counter() - started:.0f} s)"
                )
                print(format_profile(title, p), flush=True)


if __name__ == "__main__":
    main()
