"""Run a training step in N processes with torchrun, or in this process when N is 1.

The step's config travels as JSON in a file; each worker (`python -m model_repo.training.launch STEP
CONFIG`) rebuilds it and runs the same function. torchrun's `--standalone` rendezvous serves one machine;
on the GPU pool the Job passes `--nnodes` and a rendezvous endpoint instead (infra/workload/training_job.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from model_repo.training.data import DataError
from model_repo.training.finetune import TrainingDiverged

STEPS = ("finetune", "distill")


def _run_step(step: str, config: dict[str, Any]) -> dict[str, Any]:
    if step == "finetune":
        from model_repo.training.finetune import FinetuneConfig, run_finetune

        return run_finetune(FinetuneConfig(**config))
    if step == "distill":
        from model_repo.training.distill import DistillConfig, run_distill

        return run_distill(DistillConfig(**config))
    raise ValueError(f"unknown step {step!r}; one of {', '.join(STEPS)}")


def torchrun_command(step: str, config_file: Path, nproc: int) -> list[str]:
    """The torchrun command line that runs `step` in `nproc` local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "model_repo.training.launch",
        step,
        str(config_file),
    ]


def run(step: str, config: Any, nproc: int = 1) -> dict[str, Any]:
    """Run `step` with its dataclass `config` in `nproc` processes; the summary of the main process."""
    if nproc < 1:
        raise DataError(f"--nproc must be at least 1 (got {nproc})")
    if nproc == 1:
        return _run_step(step, asdict(config))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".launch-", dir=out) as tmp:
        config_file = Path(tmp) / "config.json"
        config_file.write_text(json.dumps(asdict(config)))
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run(torchrun_command(step, config_file, nproc), env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{step} failed in one of its {nproc} processes (exit {done.returncode}); see above"
            )
    from model_repo.training.finetune import SUMMARY_FILE

    summary: dict[str, Any] = json.loads((out / SUMMARY_FILE).read_text())
    return summary


USAGE = (
    "usage: python -m model_repo.training.launch {finetune|distill} CONFIG.json\n"
    "Runs one training step in this process (one torchrun worker); CONFIG.json holds the step's settings\n"
    "(FinetuneConfig or DistillConfig as JSON). Users run `tritonform finetune` or `tritonform distill`."
)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in STEPS:
        print(USAGE, file=sys.stderr if argv[:1] not in (["--help"], ["-h"]) else sys.stdout)
        return 0 if argv[:1] in (["--help"], ["-h"]) else 2
    step, config_file = argv
    config = json.loads(Path(config_file).read_text())
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        config["show_progress"] = False
    try:
        _run_step(step, config)
    except DataError as exc:  # bad input: one line per process, not a traceback
        print(f"error (process {rank}): {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:  # said once, not as a traceback (other failures keep theirs)
        print(f"error (process {rank}): {step} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
