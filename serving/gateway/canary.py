"""A canary rollout inside the gateway: split traffic between two versions, roll back on bad figures.

The stable version's Triton and the canary's Triton run side by side (two Deployments on a cluster, two
processes locally); the gateway sends a share `weight` (percent) of conversations to the canary. The
split is sticky per conversation: a request's key is the conversation's beginning (the messages up to
the first user message, or the completion prompt's first characters, or the OpenAI `user` field when
given), hashed into 10,000 buckets, so every turn of a conversation reaches the same version (and its
tokenizer: each version's prompts are rendered and counted with its own, see generation.py).

Every generation's outcome is recorded per version: Prometheus metrics (requests, server errors, time
to first token, labelled by role and version) and a sliding window of the last `window_s` seconds. After
each canary outcome the gateway compares the two windows (`RollbackPolicy.verdict`): once the canary has
at least `min_requests` in the window and its error ratio exceeds the stable one's by more than
`max_error_ratio_increase`, or its TTFT p95 exceeds `max_ttft_p95_ratio` x the stable one's, the canary's
weight becomes 0 at once (new requests all go to the stable version) and the decision is written to the
decision store: on a cluster a ConfigMap that every gateway replica reads every `refresh_s`, so one
replica's decision rolls back all of them (serving/gateway/canary_store.py). Why not Argo Rollouts or
Flagger: see README ("Canary rollouts").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.gateway.observability import LOGGER_NAME

if TYPE_CHECKING:
    from serving.gateway.schemas import ChatCompletionRequest, CompletionRequest
    from serving.gateway.settings import GatewaySettings

log = logging.getLogger(LOGGER_NAME)
STABLE, CANARY = "stable", "canary"
BUCKETS = 10_000  # a weight of 12.34 % sends buckets 0..1233 to the canary
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def conversation_key(body: ChatCompletionRequest | CompletionRequest) -> bytes:
    """What stays the same over a conversation's turns: its `user`, else its beginning."""
    user = getattr(body, "user", None)
    if user:
        return b"user:" + user.encode("utf-8")
    messages = getattr(body, "messages", None)
    if messages is not None:
        parts: list[str] = []
        for message in messages:
            parts.append(f"{message.role}\x00{message.text()}")
            if message.role == "user":
                break
        return ("\x01".join(parts)).encode("utf-8")
    return body.prompt_text()[:512].encode("utf-8")  # type: ignore[union-attr]


def bucket_of(key: bytes) -> int:
    """The conversation's bucket, 0..BUCKETS-1 (the same in every gateway replica)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % BUCKETS


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile `q` (0..1) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class Figures:
    """One version's outcomes within the window."""

    requests: int = 0
    errors: int = 0
    ttft_p95_s: float | None = None

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class OutcomeWindow:
    """The outcomes of the last `window_s` seconds: (when, ok, time to first token or None)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, bool, float | None]] = deque()

    def add(self, at: float, ok: bool, ttft_s: float | None) -> None:
        self._items.append((at, ok, ttft_s))

    def figures(self, now: float) -> Figures:
        while self._items and self._items[0][0] < now - self.window_s:
            self._items.popleft()
        ttfts = [t for _, ok, t in self._items if ok and t is not None]
        errors = sum(1 for _, ok, _t in self._items if not ok)
        return Figures(len(self._items), errors, percentile(ttfts, 0.95))


@dataclass(frozen=True)
class RollbackPolicy:
    """When a canary is rolled back (GatewaySettings.canary_*; the stack's `canary:` settings)."""

    window_s: float = 300.0
    min_requests: int = 20
    max_error_ratio_increase: float = 0.02
    max_ttft_p95_ratio: float = 1.5

    def verdict(self, stable: Figures, canary: Figures) -> str | None:
        """Why the canary must be rolled back, or None (too few requests yet, or within the margins)."""
        if canary.requests < self.min_requests:
            return None
        if canary.error_ratio > stable.error_ratio + self.max_error_ratio_increase:
            return (
                f"error ratio {canary.error_ratio:.1%} over {canary.requests} requests exceeds the stable "
                f"version's {stable.error_ratio:.1%} by more than {self.max_error_ratio_increase:.1%}"
            )
        slow, base = canary.ttft_p95_s, stable.ttft_p95_s
        if slow is not None and base is not None and base > 0 and slow > self.max_ttft_p95_ratio * base:
            return (
                f"time to first token p95 {slow:.3f} s exceeds {self.max_ttft_p95_ratio:g} x the stable "
                f"version's {base:.3f} s"
            )
        return None


class DecisionStore(Protocol):
    """Where a rollback decision is shared between gateway replicas."""

    async def load(self) -> dict[str, Any] | None: ...

    async def save(self, record: dict[str, Any]) -> None: ...


class MemoryDecisionStore:
    """One gateway's own memory (the local stack, tests)."""

    def __init__(self) -> None:
        self.record: dict[str, Any] | None = None

    async def load(self) -> dict[str, Any] | None:
        return self.record

    async def save(self, record: dict[str, Any]) -> None:
        self.record = dict(record)


class CanaryMetrics:
    """Per-version metrics on the gateway's registry (labels: role = stable|canary, version)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["role", "version"]
        self.generations = Counter(
            "tritonform_gateway_version_generations", "generations by version", labels, registry=registry
        )
        self.errors = Counter(
            "tritonform_gateway_version_errors",
            "generations that failed on the server side (5xx) by version",
            labels,
            registry=registry,
        )
        self.ttft = Histogram(
            "tritonform_gateway_version_time_to_first_token_seconds",
            "time from request to the first generated text, by version",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.window_requests = Gauge(
            "tritonform_gateway_canary_window_requests",
            "generations in the rollback window",
            labels,
            registry=registry,
        )
        self.window_errors = Gauge(
            "tritonform_gateway_canary_window_errors",
            "server errors in the rollback window",
            labels,
            registry=registry,
        )
        self.window_ttft_p95 = Gauge(
            "tritonform_gateway_canary_window_ttft_p95_seconds",
            "time to first token p95 in the rollback window (0: none yet)",
            labels,
            registry=registry,
        )
        self.weight = Gauge(
            "tritonform_gateway_canary_weight_percent",
            "share of conversations sent to the canary",
            registry=registry,
        )
        self.rolled_back = Gauge(
            "tritonform_gateway_canary_rolled_back",
            "1 once the canary was rolled back automatically",
            registry=registry,
        )


class Canary:
    """The split and the automatic rollback of one gateway (no module state: one per app)."""

    def __init__(
        self,
        versions: dict[str, str],
        weight: float,
        policy: RollbackPolicy,
        registry: CollectorRegistry,
        store: DecisionStore | None = None,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`versions`: role -> version name (stable, canary); `weight`: percent to the canary."""
        if not 0 <= weight <= 100:
            raise ValueError(f"canary weight must be between 0 and 100 percent, got {weight}")
        self.versions, self.policy, self.clock = dict(versions), policy, clock
        self.configured_weight = weight
        self.weight = weight
        self.store: DecisionStore = store or MemoryDecisionStore()
        self.refresh_s = refresh_s
        self.decision: dict[str, Any] | None = None  # the rollback, once made (here or by another replica)
        self.windows = {role: OutcomeWindow(policy.window_s) for role in (STABLE, CANARY)}
        self.metrics = CanaryMetrics(registry)
        self.metrics.weight.set(weight)
        self._synced = float("-inf")
        self._tasks: set[asyncio.Task[None]] = set()

    def _labels(self, role: str) -> tuple[str, str]:
        return role, self.versions[role]

    def choose(self, key: bytes) -> str:
        """The role (stable or canary) serving the conversation of `key`."""
        self._maybe_sync()
        return CANARY if bucket_of(key) < round(self.weight * BUCKETS / 100) else STABLE

    def record(self, role: str, ok: bool, ttft_s: float | None) -> None:
        """One finished generation of `role`: metrics, window, and (a canary's) the rollback check."""
        labels = self._labels(role)
        self.metrics.generations.labels(*labels).inc()
        if not ok:
            self.metrics.errors.labels(*labels).inc()
        elif ttft_s is not None:
            self.metrics.ttft.labels(*labels).observe(ttft_s)
        self.windows[role].add(self.clock(), ok, ttft_s)
        figures = self.figures()
        for name, fig in figures.items():
            self._export(name, fig)
        if role == CANARY and self.decision is None:
            reason = self.policy.verdict(figures[STABLE], figures[CANARY])
            if reason is not None:
                self._roll_back(reason, figures, by_this_gateway=True)

    def figures(self) -> dict[str, Figures]:
        now = self.clock()
        return {role: window.figures(now) for role, window in self.windows.items()}

    def _export(self, role: str, fig: Figures) -> None:
        labels = self._labels(role)
        self.metrics.window_requests.labels(*labels).set(fig.requests)
        self.metrics.window_errors.labels(*labels).set(fig.errors)
        self.metrics.window_ttft_p95.labels(*labels).set(fig.ttft_p95_s or 0.0)

    def _roll_back(self, reason: str, figures: dict[str, Figures], by_this_gateway: bool) -> None:
        self.weight = 0.0
        self.metrics.weight.set(0)
        self.metrics.rolled_back.set(1)
        record = {
            "version": self.versions[CANARY],
            "stable_version": self.versions[STABLE],
            "decision": "rolled-back",
            "reason": reason,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "figures": {role: asdict(fig) for role, fig in figures.items()},
        }
        self.decision = record
        log.warning("canary rolled back", extra={"canary": record})
        if by_this_gateway:
            self._spawn(self._save(record))

    async def _save(self, record: dict[str, Any]) -> None:
        try:
            await self.store.save(record)
        except Exception as exc:  # the local rollback holds; other replicas decide on their own figures
            log.error("could not record the canary rollback", extra={"error": str(exc)})

    def _maybe_sync(self) -> None:
        """Read another replica's decision from the store, at most every `refresh_s`, off the request."""
        now = self.clock()
        if self.decision is not None or now - self._synced < self.refresh_s:
            return
        self._synced = now
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no running loop (a direct call in a test): nothing to sync with
            return
        self._spawn(self.sync())

    async def sync(self) -> None:
        """Apply a rollback that the store records for this canary version."""
        try:
            record = await self.store.load()
        except Exception as exc:
            log.error("could not read the canary decision", extra={"error": str(exc)})
            return
        if (
            self.decision is None
            and record
            and record.get("version") == self.versions[CANARY]
            and record.get("decision") == "rolled-back"
        ):
            self._roll_back(
                str(record.get("reason", "rolled back by another gateway replica")),
                self.figures(),
                by_this_gateway=False,
            )
            self.decision = record

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status(self) -> dict[str, Any]:
        """What `GET /canary` answers: versions, weights, window figures, the decision."""
        figures = self.figures()
        return {
            "versions": self.versions,
            "configured_weight_percent": self.configured_weight,
            "weight_percent": self.weight,
            "policy": asdict(self.policy),
            "window": {role: {**asdict(f), "error_ratio": f.error_ratio} for role, f in figures.items()},
            "decision": json.loads(json.dumps(self.decision)) if self.decision else None,
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 2.0)


def canary_from_settings(settings: GatewaySettings, registry: CollectorRegistry) -> Canary:
    """The gateway's canary from its settings (the decision store: a ConfigMap when one is named)."""
    store: DecisionStore = MemoryDecisionStore()
    if settings.canary_decision_configmap:
        from serving.gateway.canary_store import ConfigMapDecisionStore

        store = ConfigMapDecisionStore(settings.canary_decision_configmap, settings.canary_decision_namespace)
    policy = RollbackPolicy(
        settings.canary_window_s,
        settings.canary_min_requests,
        settings.canary_max_error_ratio_increase,
        settings.canary_max_ttft_p95_ratio,
    )
    versions = {STABLE: settings.stable_version, CANARY: settings.canary_version}
    return Canary(versions, settings.canary_weight, policy, registry, store)


def canary_backend_settings(settings: GatewaySettings) -> GatewaySettings:
    """The settings `triton_backend` builds the canary's Triton client from."""
    return settings.model_copy(
        update={
            "triton_grpc_url": settings.canary_triton_grpc_url or settings.triton_grpc_url,
            "triton_discovery": settings.canary_triton_discovery,
            "triton_replica_urls": (),
        }
    )
