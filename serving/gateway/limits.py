"""Who may call (Bearer API keys) and how much (token buckets per key), plus the request body cap."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.gateway.errors import error_body


@dataclass(frozen=True)
class Caller:
    """An authenticated caller; `key_id` is a short hash, safe for logs and metrics."""

    key_id: str


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKeys:
    """Constant-time check of a presented key against every configured key."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = [(k.encode(), key_id(k)) for k in keys]

    def check(self, presented: str) -> Caller | None:
        candidate = presented.encode()
        found: str | None = None
        for key, ident in self._keys:  # no early exit: timing does not reveal which key matched
            if hmac.compare_digest(candidate, key):
                found = ident
        return Caller(found) if found else None


@dataclass
class TokenBucket:
    """`capacity` units, refilled continuously over one minute."""

    capacity: float
    level: float
    updated: float

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0 if it is now)."""
        self._refill(now)
        missing = min(amount, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


@dataclass
class RateLimiter:
    """Requests per minute and tokens per minute for each key."""

    requests_per_minute: int
    tokens_per_minute: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[TokenBucket, TokenBucket]] = field(default_factory=dict)

    def _pair(self, caller: str) -> tuple[TokenBucket, TokenBucket]:
        if caller not in self._buckets:
            now = self.clock()
            self._buckets[caller] = (
                TokenBucket(self.requests_per_minute, self.requests_per_minute, now),
                TokenBucket(self.tokens_per_minute, self.tokens_per_minute, now),
            )
        return self._buckets[caller]

    def admit(self, caller: str, tokens: int) -> int:
        """Reserve one request and `tokens`; returns 0 if admitted, else the seconds to wait."""
        requests, budget = self._pair(caller)
        now = self.clock()
        wait = max(requests.wait_for(1, now), budget.wait_for(tokens, now))
        if wait > 0:
            return max(1, math.ceil(wait))
        requests.take(1)
        budget.take(tokens)
        return 0

    def charge(self, caller: str, tokens: int) -> None:
        """Take `tokens` without a check (they are spent already); the bucket may go below zero."""
        if tokens > 0:
            self._pair(caller)[1].level -= tokens

    def refund(self, caller: str, tokens: int) -> None:
        """Give back the part of a token reservation that was not used."""
        if tokens > 0 and caller in self._buckets:
            self._buckets[caller][1].give(tokens)


class LocalKeyLimits:
    """This replica's `RateLimiter` behind the awaitable methods of `RedisRateLimiter` (the local
    stack's limiter, and the gateway's when no shared store is configured)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def admit(self, caller: str, tokens: int) -> int:
        """0 if one request and `tokens` are admitted, else the whole seconds to wait."""
        return self.limiter.admit(caller, tokens)

    async def charge(self, caller: str, tokens: int) -> None:
        """Take `tokens` without a check."""
        self.limiter.charge(caller, tokens)

    async def refund(self, caller: str, tokens: int) -> None:
        """Give back unused tokens."""
        self.limiter.refund(caller, tokens)

    async def close(self) -> None:
        """Nothing to close."""


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before any route sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # the client left during the upload: a 499
                scope.setdefault("state", {})["client_disconnected"] = True
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for a disconnect, as the server would

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        import json

        body = json.dumps(
            error_body(413, f"request body too large: the limit is max_body_bytes={self.max_bytes} bytes")
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class ApiKeyAuth:
    """ASGI middleware: paths under `prefix` need `Authorization: Bearer <key>` (checked before the body
    is parsed, so an unauthenticated caller learns nothing about the API); sets `state.key_id`."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, prefix: str = "/v1/") -> None:
        self.app, self.keys, self.prefix = app, keys, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, presented = header.partition(" ")
        if not header:
            await _send_401(send, "missing API key: send the header `Authorization: Bearer <key>`")
            return
        caller = self.keys.check(presented.strip()) if scheme.lower() == "bearer" else None
        if caller is None:
            await _send_401(send, "invalid API key")  # never echo the key
            return
        scope.setdefault("state", {})["key_id"] = caller.key_id
        await self.app(scope, receive, send)


async def _send_401(send: Send, message: str) -> None:
    import json

    body = json.dumps(error_body(401, message, code="invalid_api_key")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
        }
    )
    await send({"type": "http.response.body", "body": body})
