"""The first run's build, shown step by step: a rich line per build step (a spinner while it runs, its
time when done), while the libraries' warnings (PyTorch's export, transformers) go to a build log
instead of the terminal. `--quiet` shows nothing but errors; the log is written either way."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

# Measured on this project's 2-core machines (the default build's build_report.json timings_s:
# checkpoint 3 s, export 216 s, parity 26 s, quantise 4 s, quality 45 s), plus fetching the wheel.
FIRST_RUN_NOTE = "first run only: about 5-6 minutes on 2 CPU cores; later runs start in seconds"
_LIBRARY_LOGGERS = (
    "py.warnings",
    "torch",
    "transformers",
    "onnxscript",
    "onnx_ir",
    "onnxruntime",
    "accelerate",
)
STEP_PREFIX = "build step: "


class BuildProgress:
    """A context manager and the build's `progress(message)` callback."""

    def __init__(self, console: Console, log_file: Path, quiet: bool = False) -> None:
        self.console, self.log_file, self.quiet = console, log_file, quiet
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.step = ""
        self.steps: list[tuple[str, float]] = []  # (step, seconds) of finished steps
        self._step_started = 0.0
        self._handler: logging.Handler | None = None
        self._saved: list[tuple[logging.Logger, bool, int]] = []
        self._warnings: Any = None

    def __enter__(self) -> Self:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.FileHandler(self.log_file, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        # warnings.warn -> the "py.warnings" logger -> the build log, never the terminal
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("default")
        logging.captureWarnings(True)
        for name in _LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.propagate, logger.level))
            logger.addHandler(self._handler)
            logger.propagate = False
            logger.setLevel(logging.INFO)
        if not self.quiet:
            self.progress = Progress(
                SpinnerColumn(finished_text="[green]done[/]"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.start()
        return self

    def __call__(self, message: str) -> None:
        """The build's progress callback: a new step starts a new line; other messages are printed."""
        if self._handler is not None:
            self._handler.handle(logging.makeLogRecord({"name": "tritonform.build", "msg": message}))
        if message.startswith(STEP_PREFIX):
            self._start_step(message.removeprefix(STEP_PREFIX))
        elif self.progress is not None:
            self.progress.console.print(message, highlight=False, soft_wrap=True)

    def _start_step(self, step: str) -> None:
        self._end_step()
        self.step, self._step_started = step, time.monotonic()
        if self.progress is not None:
            self.task = self.progress.add_task(step, total=1)

    def _end_step(self) -> None:
        if self.step:
            self.steps.append((self.step, time.monotonic() - self._step_started))
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=1)
        self.task, self.step = None, ""

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self._end_step()
        if self.progress is not None:
            self.progress.stop()
        logging.captureWarnings(False)
        if self._warnings is not None:
            self._warnings.__exit__(exc_type, exc, tb)
        for logger, propagate, level in self._saved:
            if self._handler is not None:
                logger.removeHandler(self._handler)
            logger.propagate, logger.level = propagate, level
        if self._handler is not None:
            self._handler.close()
