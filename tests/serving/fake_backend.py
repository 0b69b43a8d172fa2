"""A stand-in for `TritonGenerator` that the test scripts: what it answers, and when.

The gateway's own behaviour (admission, accounting, streaming, disconnects) is tested against it,
deterministically: a test opens `gate` when it wants the first answer to exist, and reads what the
backend saw (the params it got, whether its generation was cancelled) instead of timing anything.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from serving.gateway.triton import Delta, GenerationParams, TritonError


@dataclass
class FakeTriton:
    """Answers every request with `deltas` (then, if set, raises `error`), after `gate` is opened."""

    deltas: list[Delta] = field(default_factory=lambda: [Delta("hello", True, 3, 1, "stop")])
    error: TritonError | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    seen: list[GenerationParams] = field(default_factory=list)
    started: int = 0
    cancelled: int = 0
    completed: int = 0
    closed: bool = False
    # Whether closing the client ends the generations waiting on it (the real gRPC client's streams may
    # not notice; the gateway must end them itself on shutdown).
    close_ends_generations: bool = True

    def __post_init__(self) -> None:
        self.gate.set()

    async def generate(
        self, params: GenerationParams, request_id: str, timeout_s: float
    ) -> AsyncGenerator[Delta, None]:
        self.seen.append(params)
        self.started += 1
        try:
            while not self.gate.is_set():
                if self.closed and self.close_ends_generations:
                    raise TritonError(503, "Triton at fake is unreachable; try again shortly", "unavailable")
                await asyncio.sleep(0.01)
            for delta in self.deltas:
                yield delta
            if self.error is not None:
                raise self.error
            self.completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def not_ready_reason(self) -> str | None:
        return None

    async def close(self) -> None:
        self.closed = True
