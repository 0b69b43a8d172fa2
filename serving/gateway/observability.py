"""Prometheus metrics (one registry per app, no globals), JSON logs with a request id, access log."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOGGER_NAME = "tritonform.gateway"
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection before the answer
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    """The gateway's metrics, registered on their own `CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tritonform_gateway_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tritonform_gateway_request_seconds",
            "HTTP request latency (streams: until the last byte)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tritonform_gateway_time_to_first_token_seconds",
            "time from request to the first generated text",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.completion_tokens = Counter(
            "tritonform_gateway_completion_tokens", "tokens generated", registry=r
        )
        self.prompt_tokens = Counter(
            "tritonform_gateway_prompt_tokens", "prompt tokens processed", registry=r
        )
        self.in_flight = Gauge("tritonform_gateway_generations_in_flight", "generations running", registry=r)
        self.rate_limit_store_errors = Counter(
            "tritonform_gateway_rate_limit_store_errors",
            "calls to the shared rate-limit store (Redis) that failed; this replica's limits applied",
            registry=r,
        )
        self.triton_errors = Counter(
            "tritonform_gateway_triton_errors",
            "failed calls to Triton by HTTP status given",
            ["status"],
            registry=r,
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, request id and any `extra` fields."""

    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> logging.Logger:
    """JSON logs on stderr for the gateway's logger (idempotent)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())
    return logger


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class RequestContext:
    """ASGI middleware: request id (from `X-Request-ID` or new), access log line, request metrics."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app, self.metrics = app, metrics
        self.log = logging.getLogger(LOGGER_NAME)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            state = scope.get("state", {})
            if status is None:  # no response started: the client left first (499), else a failure
                status = CLIENT_CLOSED if state.get("client_disconnected") else 500
            route = _route_label(scope)
            if route not in ("/metrics", "/healthz", "/readyz"):
                self.metrics.requests.labels(route, str(status)).inc()
                self.metrics.latency.labels(route).observe(elapsed)
            self.log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 1),
                    "key_id": state.get("key_id"),
                    "usage": state.get("usage"),
                },
            )
            request_id_var.reset(token)
