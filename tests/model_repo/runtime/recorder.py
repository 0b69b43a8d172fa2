"""A stand-in for the Triton response sender that records what a job sent (shared by the runtime tests)."""

from __future__ import annotations

import threading
from typing import Any

from model_repo.runtime.request import Response


class Recorder:
    """A job's answers: what `emit` and `fail` were called with, and when it ended."""

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.errors: list[Any] = []
        self.done = threading.Event()

    def emit(self, response: Response) -> None:
        self.responses.append(response)
        if response.final:
            self.done.set()

    def fail(self, message: str) -> None:
        self.errors.append(message)
        self.done.set()
