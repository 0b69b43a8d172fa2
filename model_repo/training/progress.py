"""Progress and metrics for long training steps: a rich bar (step, loss, tokens/s, time left) and a
`metrics.jsonl` in the output folder, one JSON object per logged step, written by the main process only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

METRICS_FILE = "metrics.jsonl"


class ProgressAndMetrics(TrainerCallback):
    """A transformers `TrainerCallback`: shows progress on the main process and logs every step's metrics.

    Tokens per second count the tokens the trainer reports having seen (`num_input_tokens_seen`, all
    processes together), so the figure is the whole job's throughput.
    """

    def __init__(self, out: Path, description: str, show: bool = True) -> None:
        self.out = Path(out)
        self.description = description
        self.show = show
        self.history: list[dict[str, Any]] = []
        self._progress: Any = None
        self._task: Any = None
        self._start = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = time.monotonic()
        if not state.is_world_process_zero:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / METRICS_FILE).write_text("")
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=state.max_steps, loss="-", tps="-")

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        elapsed = max(time.monotonic() - self._start, 1e-9)
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        record = {"step": state.global_step, **logs, "tokens_seen": tokens, "elapsed_s": round(elapsed, 3)}
        if tokens:
            record["tokens_per_s"] = round(tokens / elapsed, 1)
        self.history.append(record)
        with (self.out / METRICS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._progress is not None and "loss" in logs:
            self._progress.update(
                self._task, loss=f"{float(logs['loss']):.4f}", tps=f"{record.get('tokens_per_s', 0):.0f}"
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)
            self._progress.stop()
            self._progress = None


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """The per-step metrics a run wrote to `out/metrics.jsonl`."""
    path = Path(out) / METRICS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def with_loss_parts(logs: dict[str, float], parts: dict[str, list[float]]) -> dict[str, float]:
    """`logs` plus each loss part's mean since the last log (a Trainer's `log` override calls this when
    the loss is logged); the parts are emptied."""
    if "loss" not in logs or not any(parts.values()):
        return logs
    logs = {**logs, **{k: sum(v) / len(v) for k, v in parts.items() if v}}
    for values in parts.values():
        values.clear()
    return logs
