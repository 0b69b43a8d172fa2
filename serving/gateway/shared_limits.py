"""Per-key rate limits that hold across gateway replicas: token buckets kept in Redis (or Valkey).

Each key has two buckets (requests per minute, tokens per minute) in one Redis hash, updated by one
Lua script, so a check and its reservation are atomic across every replica; the script reads the
server's clock (`TIME`), so replicas' clocks do not matter. Keys expire two minutes after their last
use (a bucket idle for a minute is full again, the same as no key).

Redis unreachable (or slower than `timeout_s`): the gateway keeps serving with each replica's own
in-memory limits (`RateLimiter`), logs the first failure and counts every one
(`tritonform_gateway_rate_limit_store_errors_total`). Not failing closed, because the limits share
cost fairly between keys while authentication and each replica's concurrency cap still hold: a
counter store that is down (one replica, no persistence) must not take the whole API down with it.
Not failing fully open either: the per-replica limits still bound every key (at most replicas x the
limit) until Redis is back, which the next request finds out by itself.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from serving.gateway.limits import RateLimiter

log = logging.getLogger("tritonform.gateway")

KEY_PREFIX = "tritonform:ratelimit:"
_BUCKETS = """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local mode, amount = ARGV[3], tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'r', 't', 'ts')
local requests, tokens, updated = tonumber(state[1]), tonumber(state[2]), tonumber(state[3])
if requests == nil then requests, tokens, updated = rpm, tpm, now end
local elapsed = math.max(0, now - updated)
requests = math.min(rpm, requests + elapsed * rpm / 60000)
tokens = math.min(tpm, tokens + elapsed * tpm / 60000)
local wait_ms = 0
if mode == 'admit' then
  local want = math.min(amount, tpm)
  wait_ms = math.max((1 - requests) * 60000 / rpm, (want - tokens) * 60000 / tpm, 0)
  if wait_ms <= 0 then requests, tokens = requests - 1, tokens - want end
elseif mode == 'charge' then
  tokens = tokens - amount
else
  tokens = math.min(tpm, tokens + amount)
end
redis.call('HSET', KEYS[1], 'r', tostring(requests), 't', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return math.ceil(wait_ms)
"""


class RedisRateLimiter:
    """Requests and tokens per minute for each key, shared by every gateway using the same Redis.

    The same methods as `RateLimiter`, awaited: `admit` (0 or seconds to wait), `charge` (take tokens
    known only later, e.g. the prompt once tokenised; the bucket may go below zero) and `refund`.
    """

    def __init__(
        self,
        url: str,
        requests_per_minute: int,
        tokens_per_minute: int,
        fallback: RateLimiter,
        on_store_error: Any = None,
        timeout_s: float = 0.25,
    ) -> None:
        import redis.asyncio as redis

        self.requests_per_minute, self.tokens_per_minute = requests_per_minute, tokens_per_minute
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )
        self._script = self.client.register_script(_BUCKETS)
        self.fallback = fallback
        self._on_store_error = on_store_error
        self._failing = False

    async def admit(self, caller: str, tokens: int) -> int:
        """Reserve one request and `tokens`; 0 if admitted, else the whole seconds to wait (>= 1)."""
        wait_ms = await self._run(caller, "admit", tokens)
        if wait_ms is None:
            return self.fallback.admit(caller, tokens)
        return 0 if wait_ms <= 0 else max(1, math.ceil(wait_ms / 1000))

    async def charge(self, caller: str, tokens: int) -> None:
        """Take `tokens` without a check (they are spent already)."""
        if tokens > 0 and await self._run(caller, "charge", tokens) is None:
            self.fallback.charge(caller, tokens)

    async def refund(self, caller: str, tokens: int) -> None:
        """Give back the part of a token reservation that was not used."""
        if tokens > 0 and await self._run(caller, "refund", tokens) is None:
            self.fallback.refund(caller, tokens)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def _run(self, caller: str, mode: str, amount: int) -> int | None:
        from redis.exceptions import RedisError

        try:
            answer = await self._script(
                keys=[KEY_PREFIX + caller],
                args=[self.requests_per_minute, self.tokens_per_minute, mode, amount],
            )
        except (RedisError, OSError) as exc:
            if not self._failing:  # once per outage, not once per request
                log.warning(
                    "rate-limit store unreachable: using this replica's own limits until it is back",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
            self._failing = True
            if self._on_store_error is not None:
                self._on_store_error()
            return None
        if self._failing:
            log.info("rate-limit store reachable again: limits are shared across replicas")
            self._failing = False
        return int(answer)
