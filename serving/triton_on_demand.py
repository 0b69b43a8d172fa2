"""A local Triton that runs only while it is used: `tritonform serve --idle-stop SECONDS`.

The local counterpart of Triton scaling to zero on a cluster, through the same gateway code: after
`idle_stop_s` with nothing admitted and nothing held, the watcher thread stops Triton (its whole process
group). The next request finds it unreachable, waits in the gateway's cold-start hold
(serving/gateway/holding.py), whose `on_cold` hook calls `wake()`: Triton starts again in a thread (on
new free ports: the old ones may linger in TIME-WAIT), the gateway is pointed at it (`on_started`), and
the hold releases every waiting request once Triton answers ready. Stop and start take one lock, so a
request that arrives while Triton is being stopped simply waits for the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from serving.triton_local import TritonServer, TritonServerConfig, TritonStartError

log = logging.getLogger("tritonform.local")
TICK_S = 0.1  # how often the watcher looks at the gateway's load


class TritonOnDemand:
    """Starts, idles out and restarts one local Triton. `attach()` before `start()`."""

    def __init__(self, config: TritonServerConfig, idle_stop_s: float, tick_s: float = TICK_S) -> None:
        if idle_stop_s <= 0:
            raise ValueError(f"idle_stop_s must be positive, got {idle_stop_s}")
        self.config, self.idle_stop_s, self.tick_s = config, idle_stop_s, tick_s
        self.server: TritonServer | None = None
        self.starts = self.stops = 0  # what happened, for `serve`'s messages and the tests
        self.start_errors: list[str] = []
        self.start_seconds: list[float] = []  # how long each start took, until Triton was ready
        self._lock = threading.Lock()  # one start or stop at a time
        self._closing = threading.Event()
        self._busy: Callable[[], bool] = lambda: False
        self._on_started: Callable[[str], None] = lambda _url: None
        self._watcher: threading.Thread | None = None
        self._waker: threading.Thread | None = None
        self._last_busy = time.monotonic()

    def attach(self, busy: Callable[[], bool], on_started: Callable[[str], None]) -> None:
        """`busy()`: whether the gateway has requests admitted or held; `on_started(grpc_url)`: point the
        gateway at a restarted Triton (called from the starting thread, before the hold is released)."""
        self._busy, self._on_started = busy, on_started

    @property
    def stop_timeout_s(self) -> float:
        return TritonServer(self.config).stop_timeout_s

    def start(self) -> TritonServer:
        """The first start (blocking; `TritonStartError` as `TritonServer.start`), then the idle watcher."""
        with self._lock:
            self.server = self._launch()
        self._last_busy = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, name="tritonform-idle-stop", daemon=True)
        self._watcher.start()
        return self.server

    def _launch(self) -> TritonServer:
        server = TritonServer(self.config)
        began = time.monotonic()
        server.start()
        self.start_seconds.append(time.monotonic() - began)
        self.starts += 1
        return server

    def wake(self) -> None:
        """Start Triton again if it is stopped (the gateway's `on_cold`; returns at once)."""
        if self._closing.is_set() or (self._waker is not None and self._waker.is_alive()):
            return
        self._waker = threading.Thread(target=self._wake, name="tritonform-wake", daemon=True)
        self._waker.start()

    def _wake(self) -> None:
        with self._lock:
            if self.server is not None or self._closing.is_set():
                return
            try:
                server = self._launch()
            except TritonStartError as exc:
                # The held requests then end with the hold's 503; the next request tries again.
                self.start_errors.append(str(exc).splitlines()[0])
                log.error("Triton did not start again: %s", self.start_errors[-1])
                return
            self.server = server
            self._last_busy = time.monotonic()
            log.info("Triton started again on demand (grpc %s)", server.grpc_url)
        self._on_started(server.grpc_url)

    def _watch(self) -> None:
        while not self._closing.wait(self.tick_s):
            now = time.monotonic()
            if self._busy():
                self._last_busy = now
                continue
            if self.server is None or now - self._last_busy < self.idle_stop_s:
                continue
            with self._lock:
                if self._busy() or self.server is None or self._closing.is_set():
                    continue
                server, self.server = self.server, None
                log.info("Triton idle for %.0f s: stopping it until the next request", self.idle_stop_s)
                server.stop()
                self.stops += 1

    def close(self) -> None:
        """Stop the watcher, any start under way, and Triton. Idempotent."""
        self._closing.set()
        for thread in (self._watcher, self._waker):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=self.stop_timeout_s + self.config.startup_timeout_s)
        with self._lock:
            server, self.server = self.server, None
        if server is not None:
            server.stop()
