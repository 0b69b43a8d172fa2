"""Holding requests while no Triton replica is ready: a scale from zero, a restart, a local idle stop.

KServe's activator does this for Knative: the request waits at the front door while the backend comes
back. Here a generation that finds Triton unreachable or its model not loaded (a 503 before any answer,
confirmed by Triton's readiness call so that a full queue is not mistaken for a cold start) waits in a
bounded hold: at most `max_held` requests, each at most `timeout_s`. One watcher task polls Triton's
readiness for all of them and releases them together once it answers; each then sends its request again.
The number held is a gauge (`tritonform_gateway_requests_held`) that KEDA adds to the generations in
flight, so a held request is what takes Triton from 0 to 1 replica. A request the hold cannot take (full)
or that waits past the timeout gets a 503 with Retry-After; every outcome is counted, none is silent.
`on_cold` (the local stack's `--idle-stop`) is called when a hold begins, to start Triton again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from serving.gateway.observability import LOGGER_NAME
from serving.gateway.triton import TritonError

log = logging.getLogger(LOGGER_NAME)
ReadyCheck = Callable[[], Awaitable[str | None]]  # None when ready, else why not (not_ready_reason)
POLL_S = 0.25  # how often the watcher asks Triton whether it is ready while requests wait
OUTCOMES = ("released", "timeout", "full", "cancelled")


class ColdStartError(TritonError):
    """A request the hold could not serve: full, or Triton not ready within the timeout (503)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(503, message, "unavailable")
        self.retry_after_s = retry_after_s


class ColdStartHold:
    """The bounded hold of one gateway (no module state: one per app)."""

    def __init__(
        self,
        timeout_s: float,
        max_held: int,
        registry: CollectorRegistry,
        on_cold: Callable[[], None] | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.timeout_s, self.max_held, self.poll_s = timeout_s, max_held, poll_s
        self.on_cold = on_cold
        self.held = 0
        self._ready: asyncio.Event | None = None  # set by the watcher when Triton answers ready
        self._watcher: asyncio.Task[None] | None = None
        self._poke: asyncio.Event | None = None  # `poke()`: check readiness now, not at the next poll
        self.gauge = Gauge(
            "tritonform_gateway_requests_held",
            "requests waiting for a Triton replica to become ready (scale from zero)",
            registry=registry,
        )
        self.outcomes = Counter(
            "tritonform_gateway_held_requests",
            "held requests by outcome: released once Triton was ready, timeout or full (503), cancelled",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.outcomes.labels(outcome)

    @property
    def enabled(self) -> bool:
        return self.timeout_s > 0

    @property
    def cold(self) -> bool:
        """Requests are held now: a new one joins them without trying Triton first."""
        return self._ready is not None and not self._ready.is_set()

    def count(self, outcome: str) -> None:
        self.outcomes.labels(outcome).inc()

    async def should_hold(self, error: TritonError, check: ReadyCheck) -> bool:
        """Whether a generation that failed with `error` before any answer waits for Triton: a 503 while
        Triton's readiness call says it is not ready (a full queue answers 503 with Triton ready)."""
        if not self.enabled or error.status != 503 or isinstance(error, ColdStartError):
            return False
        try:
            return await check() is not None
        except Exception:
            return True

    def deadline(self) -> float:
        """The loop time a request that starts waiting now must be served by."""
        return asyncio.get_running_loop().time() + self.timeout_s

    async def wait(self, check: ReadyCheck, deadline: float) -> None:
        """Wait until `check` says Triton is ready; `ColdStartError` when full or past `deadline`."""
        loop = asyncio.get_running_loop()
        if self.held >= self.max_held:
            self.count("full")
            raise ColdStartError(
                f"no Triton replica is ready and {self.held} requests already wait for one "
                f"(max_held_requests={self.max_held}); retry shortly",
                retry_after_s=max(1, round(self.timeout_s / 4)),
            )
        if not self.cold:
            self._ready = asyncio.Event()
            log.info("no Triton replica is ready: holding requests", extra={"timeout_s": self.timeout_s})
            if self.on_cold is not None:
                self.on_cold()
        ready = self._ready
        assert ready is not None
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(check))
        self.held += 1
        self.gauge.inc()
        try:
            await asyncio.wait_for(ready.wait(), max(0.0, deadline - loop.time()))
            self.count("released")
        except TimeoutError:
            self.count("timeout")
            raise ColdStartError(
                f"no Triton replica became ready within {self.timeout_s:g} s (gateway "
                "cold_start_timeout_s); the model may still be starting: retry later",
                retry_after_s=max(1, round(self.timeout_s / 2)),
            ) from None
        except asyncio.CancelledError:
            self.count("cancelled")
            raise
        finally:
            self.held -= 1
            self.gauge.dec()
            if self.held == 0 and self._watcher is not None and not ready.is_set():
                self._watcher.cancel()
                self._watcher = None
                self._ready = None  # nobody waits: the next request tries Triton first again

    def poke(self) -> None:
        """Check readiness at once (the local stack has just started Triton); call on the event loop."""
        if self._poke is not None:
            self._poke.set()

    async def _watch(self, check: ReadyCheck) -> None:
        """Poll readiness until Triton answers, then release every held request at once."""
        self._poke = asyncio.Event()
        while True:
            reason: str | None = "unknown"
            with contextlib.suppress(Exception):
                reason = await check()
            if reason is None:
                if self._ready is not None:
                    self._ready.set()
                log.info("Triton is ready: releasing held requests", extra={"held": self.held})
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.poll_s)
            self._poke.clear()

    async def close(self) -> None:
        """Stop the watcher (the gateway stops); held requests end through the gateway's interrupts."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(BaseException):
                await self._watcher
            self._watcher = None
