"""Time `tritonform plan --json` per stack, end to end in a fresh process (what a user waits for).

Prints the median wall time of a few runs per stack and its ratio to the 5 s target, and the cost of
starting the CLI at all (`tritonform --help`) for comparison, all measured side by side in one run.
Usage: scripts/bootstrap python benchmarks/bench_plan.py [--runs 3] [STACK ...]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 5.0


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stacks", nargs="*", help="stack names (default: every stacks/Pulumi.*.yaml)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    stacks = args.stacks or sorted(
        p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("Pulumi.*.yaml")
    )
    exe = shutil.which("tritonform") or str(Path(sys.executable).parent / "tritonform")
    baseline = statistics.median(_time([exe, "--help"]) for _ in range(args.runs))
    print(f"{'stack':<12} {'median s':>9} {'vs 5 s target':>14} {'vs CLI start':>13}")
    print(f"{'(--help)':<12} {baseline:>9.2f} {baseline / TARGET_S:>13.2f}x {1.0:>12.1f}x")
    for stack in stacks:
        median = statistics.median(_time([exe, "plan", "--stack", stack, "--json"]) for _ in range(args.runs))
        print(f"{stack:<12} {median:>9.2f} {median / TARGET_S:>13.2f}x {median / baseline:>12.1f}x")


if __name__ == "__main__":
    main()
