"""The local stack behind `tritonform serve`: a real Triton plus the gateway, started and stopped together.

    with LocalStack(LocalStackConfig(model_repository=repo, port=8000)) as stack:
        print(stack.url, stack.api_key)

Start order: check the gateway port is free, start Triton (serving/triton_local.py, free loopback
ports), start the gateway (uvicorn in a thread of this process), wait until `/readyz` answers 200.
`stop()` shuts the gateway, then Triton (its whole process group) and removes Triton's scratch
directory, so nothing is left behind. Every failure a user can cause is a `StackError` with one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn
from pydantic import SecretStr

from model_repo.manifest import engine_dir
from serving.canary_faults import write_failing_copy
from serving.gateway import GatewaySettings, create_app, server_config
from serving.gateway.generation import Gateway as GenerationFront
from serving.triton_local import TritonServer, TritonServerConfig, TritonStartError
from serving.triton_on_demand import TritonOnDemand

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


# How long the gateway may drain open requests on stop, then how long its forced exit may take.
GATEWAY_DRAIN_S, GATEWAY_FORCE_S = 15.0, 5.0


class StackError(RuntimeError):
    """The local stack cannot start; the message says why in one line."""


@dataclass(frozen=True)
class LocalStackConfig:
    model_repository: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None  # None: a fresh random key
    startup_timeout_s: float = 120.0
    log_level: str = "WARNING"
    # Stop Triton after this long idle and start it again on the next request, which the gateway holds
    # meanwhile (serving/triton_on_demand.py); None: Triton runs until the stack stops.
    idle_stop_s: float | None = None
    # Triton processes to run; with 2 or more the gateway routes by prompt prefix (routing.py).
    triton_replicas: int = 1
    routing: Literal["prefix", "round-robin"] = "prefix"  # round-robin: the benchmark's baseline
    # A canary rollout (serving/gateway/canary.py): this repository's version runs in its own Triton
    # process beside the stable one and takes `canary_weight` percent of conversations; a copy that
    # fails every `canary_fail_every`-th request rehearses the automatic rollback (serving/canary_faults.py).
    canary_repository: Path | None = None
    canary_weight: float = 10.0
    canary_fail_every: int | None = None
    canary_window_s: float = 60.0
    canary_min_requests: int = 10


def find_model_name(repository: Path) -> str:
    """The one model in a repository (a folder with config.pbtxt); `StackError` otherwise."""
    if not repository.is_dir():
        raise StackError(f"model repository {repository} does not exist; build one with `tritonform build`")
    models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    if len(models) != 1:
        found = ", ".join(models) or "none"
        raise StackError(f"model repository {repository} must hold exactly one model (found: {found})")
    return models[0]


def check_port_free(host: str, port: int) -> None:
    """`StackError` unless the gateway can listen on `host:port` now.

    The check binds as the server itself will (uvicorn sets SO_REUSEADDR): connections of a stopped
    or killed stack that linger in TIME-WAIT do not hold the port, a listening process does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"port {port} on {host} is not available ({exc.strerror}); choose another with --port"
            ) from None


class LocalStack:
    """Triton + gateway on this machine; a context manager."""

    def __init__(self, config: LocalStackConfig) -> None:
        self.config = config
        self.api_key = config.api_key or "tf-local-" + secrets.token_urlsafe(24)
        self.triton: TritonServer | None = None
        self.on_demand: TritonOnDemand | None = None  # with idle_stop_s: owns Triton's (re)starts
        self.replicas: list[TritonServer] = []  # with triton_replicas > 1: every Triton process
        self.canary: TritonServer | None = None  # with canary_repository: the canary's Triton
        self._scratch: tempfile.TemporaryDirectory[str] | None = None  # the broken canary copy
        self._server: uvicorn.Server | None = None
        self._gateway: GenerationFront | None = None  # the app's front (stop() ends its streams)
        self._thread: threading.Thread | None = None
        self.model_name = ""

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        c = self.config
        self.model_name = find_model_name(c.model_repository)
        if c.triton_replicas < 1:
            raise StackError(f"--triton-replicas must be at least 1, got {c.triton_replicas}")
        if c.triton_replicas > 1 and c.idle_stop_s is not None:
            raise StackError("--idle-stop works with one Triton; leave out --triton-replicas or --idle-stop")
        if c.canary_repository is not None:
            self._check_canary()
        check_port_free(c.host, c.port)
        deadline = time.monotonic() + c.startup_timeout_s
        try:
            triton_config = TritonServerConfig(c.model_repository, startup_timeout_s=c.startup_timeout_s)
            try:
                if c.idle_stop_s is not None:
                    self.on_demand = TritonOnDemand(triton_config, c.idle_stop_s)
                    self.on_demand.attach(self._gateway_busy, self._gateway_use)
                    grpc_url = self.on_demand.start().grpc_url
                else:
                    for _ in range(c.triton_replicas):
                        self.replicas.append(TritonServer(triton_config))
                        self.replicas[-1].start()
                    self.triton = self.replicas[0]
                    grpc_url = self.triton.grpc_url
                canary = self._start_canary()
            except TritonStartError as exc:
                first = str(exc).splitlines()[0]
                raise StackError(f"Triton did not start: {first}") from exc
            settings = GatewaySettings(
                **canary,
                triton_grpc_url=grpc_url,
                model_name=self.model_name,
                model_repository=c.model_repository,
                api_keys=(SecretStr(self.api_key),),
                log_level=c.log_level,
                # An idle-stopped Triton comes back within its start-up time: hold requests that long.
                cold_start_timeout_s=c.startup_timeout_s if c.idle_stop_s is not None else 0.0,
                triton_replica_urls=tuple(r.grpc_url for r in self.replicas) if c.triton_replicas > 1 else (),
                routing=c.routing,
            )
            app = create_app(settings, on_cold=self.on_demand.wake if self.on_demand else None)
            self._gateway = app.state.gateway
            self._server = uvicorn.Server(
                server_config(app, settings, c.host, c.port, log_level="warning", lifespan="on")
            )
            self._thread = threading.Thread(target=self._server.run, name="tritonform-gateway", daemon=True)
            self._thread.start()
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def _check_canary(self) -> None:
        c = self.config
        assert c.canary_repository is not None
        if c.idle_stop_s is not None:
            raise StackError("--idle-stop works without a canary; leave out --canary or --idle-stop")
        if not 0 < c.canary_weight <= 100:
            raise StackError(
                f"--canary-weight must be above 0 and at most 100 percent, got {c.canary_weight}"
            )
        if c.canary_fail_every is not None and c.canary_fail_every < 1:
            raise StackError(f"--canary-fail-every must be at least 1, got {c.canary_fail_every}")
        name = find_model_name(c.canary_repository)
        if name != self.model_name:
            raise StackError(
                f"the canary repository serves model {name!r}, the stable one {self.model_name!r}: "
                "build the canary with the same --model-name"
            )

    def _start_canary(self) -> dict[str, Any]:
        """Start the canary's Triton (a broken copy when asked); the gateway's canary settings."""
        c = self.config
        if c.canary_repository is None:
            return {}
        repository = c.canary_repository
        if c.canary_fail_every is not None:
            self._scratch = tempfile.TemporaryDirectory(prefix="tritonform-canary-")
            repository = write_failing_copy(
                repository, Path(self._scratch.name) / "repo", c.canary_fail_every
            )
        self.canary = TritonServer(TritonServerConfig(repository, startup_timeout_s=c.startup_timeout_s))
        self.canary.start()
        stable, canary = c.model_repository.resolve().name, c.canary_repository.resolve().name
        return {
            "canary_triton_grpc_url": self.canary.grpc_url,
            "canary_tokenizer_dir": engine_dir(repository, self.model_name),
            "canary_weight": c.canary_weight,
            "stable_version": stable,
            "canary_version": canary if canary != stable else f"{canary}-canary",
            "canary_window_s": c.canary_window_s,
            "canary_min_requests": c.canary_min_requests,
        }

    def _gateway_busy(self) -> bool:
        gateway = self._gateway
        return gateway is not None and (gateway.active > 0 or gateway.hold.held > 0)

    def _gateway_use(self, grpc_url: str) -> None:
        """Point the gateway at a restarted Triton (from the thread that started it)."""
        gateway = self._gateway
        if gateway is not None and gateway.loop is not None:
            asyncio.run_coroutine_threadsafe(gateway.use_triton(grpc_url), gateway.loop).result(
                GATEWAY_FORCE_S
            )

    def _wait_ready(self, deadline: float) -> None:
        assert self._server is not None and self._thread is not None
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise StackError(f"the gateway stopped during start-up (is port {self.config.port} free?)")
            if self._server.started and _status(self.url + "/readyz") == 200:
                return
            time.sleep(0.1)
        raise StackError(f"the stack was not ready after {self.config.startup_timeout_s:.0f} s")

    @property
    def stop_timeout_s(self) -> float:
        """The longest `stop()` can take: ending the gateway's requests, its drain and forced exit, then
        Triton's stop."""
        servers = max(1, len(self.replicas)) + (1 if self.canary is not None else 0)
        triton_s = self.triton.stop_timeout_s * servers if self.triton is not None else 0.0
        if self.on_demand is not None:
            triton_s = self.on_demand.stop_timeout_s
        return GATEWAY_FORCE_S + GATEWAY_DRAIN_S + GATEWAY_FORCE_S + triton_s

    def stop(self) -> None:
        """Stop the gateway, then Triton; idempotent, bounded by `stop_timeout_s`."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        gateway, self._gateway = self._gateway, None
        if gateway is not None and thread is not None and thread.is_alive():
            # Refuse new requests and end every running stream with a final error event, so that the
            # server's connections finish instead of being cut when it exits.
            with contextlib.suppress(Exception):
                gateway.shutdown_from_thread(GATEWAY_FORCE_S)
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=GATEWAY_DRAIN_S)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=GATEWAY_FORCE_S)
        triton, self.triton = self.triton, None
        replicas, self.replicas = self.replicas, []
        for triton_server in replicas or ([triton] if triton is not None else []):
            triton_server.stop()
        canary_server, self.canary = self.canary, None
        if canary_server is not None:
            canary_server.stop()
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            scratch.cleanup()
        on_demand, self.on_demand = self.on_demand, None
        if on_demand is not None:
            on_demand.close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0
