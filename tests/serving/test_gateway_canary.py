"""The gateway's canary rollout (serving/gateway/canary.py): a sticky split by conversation, per-version
figures, and the automatic rollback, against scripted backends (the real-Triton rehearsal is in
test_local_stack_canary.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from serving.gateway.canary import (
    CANARY,
    STABLE,
    Canary,
    Figures,
    MemoryDecisionStore,
    OutcomeWindow,
    RollbackPolicy,
    bucket_of,
)
from serving.gateway.canary_store import ConfigMapDecisionStore
from serving.gateway.triton import Delta, TritonError
from tests.serving.conftest import API_KEY, MODEL, RunningGateway, gateway_settings, start_gateway
from tests.serving.fake_backend import FakeTriton


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _canary(weight: float = 50, clock: Clock | None = None, **policy: Any) -> Canary:
    values = {"window_s": 60.0, "min_requests": 5, **policy}
    return Canary(
        {STABLE: "v1", CANARY: "v2"},
        weight,
        RollbackPolicy(**values),
        CollectorRegistry(),
        clock=clock or Clock(),
    )


def test_the_split_sends_the_weight_share_of_conversations_and_keeps_each_where_it_began() -> None:
    """About `weight` percent of 2,000 distinct conversations go to the canary, and a key always gets the
    same answer (the hash is fixed, so the figure is exact for these keys)."""
    canary = _canary(weight=25)
    keys = [f"conversation {i}".encode() for i in range(2000)]
    chosen = [canary.choose(key) for key in keys]
    share = chosen.count(CANARY) / len(keys)
    assert 0.22 <= share <= 0.28
    assert chosen == [canary.choose(key) for key in keys]
    assert all(bucket_of(k) < 2500 for k, role in zip(keys, chosen, strict=True) if role == CANARY)


def test_the_window_forgets_outcomes_older_than_its_length() -> None:
    """Figures count only the last `window_s` seconds; p95 is over successful generations."""
    window = OutcomeWindow(10)
    window.add(0.0, False, None)
    for i in range(20):
        window.add(5.0, True, 0.01 * (i + 1))
    assert window.figures(9.0) == Figures(21, 1, 0.19)
    assert window.figures(12.0) == Figures(20, 0, 0.19)
    assert window.figures(16.0) == Figures(0, 0, None)


def test_the_policy_judges_only_with_enough_canary_requests_and_beyond_the_margins() -> None:
    policy = RollbackPolicy(window_s=60, min_requests=10, max_error_ratio_increase=0.05, max_ttft_p95_ratio=2)
    stable = Figures(100, 2, 0.1)
    assert policy.verdict(stable, Figures(9, 9, None)) is None  # too few to judge
    assert policy.verdict(stable, Figures(10, 0, 0.19)) is None  # within both margins
    reason = policy.verdict(stable, Figures(10, 1, 0.1))
    assert reason is not None and "error ratio 10.0%" in reason
    reason = policy.verdict(stable, Figures(10, 0, 0.25))
    assert reason is not None and "time to first token p95" in reason


def test_a_failing_canary_is_rolled_back_its_weight_pinned_to_zero_and_the_decision_stored() -> None:
    """Once the canary's window shows errors beyond the margin, every conversation goes to the stable
    version, the metrics say so, and the decision is saved for the other gateway replicas."""

    async def scenario() -> tuple[Canary, MemoryDecisionStore]:
        store = MemoryDecisionStore()
        canary = Canary(
            {STABLE: "v1", CANARY: "v2"}, 50, RollbackPolicy(60, 5, 0.02, 1.5), CollectorRegistry(), store
        )
        for _ in range(10):
            canary.record(STABLE, True, 0.1)
        for i in range(5):
            canary.record(CANARY, i % 2 == 0, 0.1)
        await canary.close()
        return canary, store

    canary, store = asyncio.run(scenario())
    assert canary.weight == 0
    assert {canary.choose(f"c{i}".encode()) for i in range(200)} == {STABLE}
    assert store.record is not None and store.record["version"] == "v2"
    assert store.record["figures"]["canary"] == {"requests": 5, "errors": 2, "ttft_p95_s": 0.1}
    status = canary.status()
    assert status["weight_percent"] == 0 and status["configured_weight_percent"] == 50
    assert status["decision"]["decision"] == "rolled-back"


def test_a_replica_follows_a_rollback_another_replica_recorded_for_its_canary_version_only() -> None:
    async def scenario(version: str) -> float:
        store = MemoryDecisionStore()
        store.record = {"version": version, "decision": "rolled-back", "reason": "elsewhere"}
        canary = Canary({STABLE: "v1", CANARY: "v2"}, 30, RollbackPolicy(), CollectorRegistry(), store)
        await canary.sync()
        return canary.weight

    assert asyncio.run(scenario("v2")) == 0
    assert asyncio.run(scenario("v0")) == 30  # a decision about an earlier canary does not apply


class _ConfigMaps:
    """A stand-in for kubernetes.client.CoreV1Api's two ConfigMap calls."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.calls: list[tuple[str, str, str]] = []

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        self.calls.append(("read", name, namespace))
        return type("ConfigMap", (), {"data": dict(self.data)})()

    def patch_namespaced_config_map(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.calls.append(("patch", name, namespace))
        self.data.update(body["data"])


def test_the_configmap_store_patches_and_reads_back_the_decision() -> None:
    api = _ConfigMaps()
    store = ConfigMapDecisionStore("tritonform-canary", "llm", api=api)
    assert asyncio.run(store.load()) is None
    asyncio.run(store.save({"version": "v2", "decision": "rolled-back"}))
    assert asyncio.run(store.load()) == {"version": "v2", "decision": "rolled-back"}
    assert {(name, ns) for _, name, ns in api.calls} == {("tritonform-canary", "llm")}


def _chat(client: httpx.Client, conversation: int, turns: int = 1) -> list[int]:
    statuses = []
    messages = [{"role": "system", "content": "Be brief."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"customer {conversation} asks {turn}"})
        response = client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 4}
        )
        statuses.append(response.status_code)
        messages.append({"role": "assistant", "content": "ok"})
    return statuses


@pytest.fixture
def canary_gateway(roomy_context: Path) -> Any:
    running: list[RunningGateway] = []

    def start(stable: FakeTriton, canary: FakeTriton, **overrides: Any) -> RunningGateway:
        values = {
            "tokenizer_dir": roomy_context,
            "canary_triton_grpc_url": "127.0.0.1:2",
            "canary_weight": 50.0,
            "canary_min_requests": 4,
            "canary_window_s": 600.0,
            "stable_version": "v1",
            "canary_version": "v2",
            **overrides,
        }
        gateway = start_gateway(
            gateway_settings("127.0.0.1:1", roomy_context, **values), backend=stable, canary_backend=canary
        )
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


def test_through_the_gateway_a_broken_canary_is_rolled_back_and_no_request_fails_after(
    canary_gateway: Any,
) -> None:
    """Half of the conversations reach a canary that fails every request; after `canary_min_requests` of
    them the gateway rolls back by itself, and every request after that succeeds on the stable version.
    Each conversation's turns stay on one version until then."""
    stable = FakeTriton()
    broken = FakeTriton(deltas=[], error=TritonError(502, "generation failed in Triton: boom"))
    running = canary_gateway(stable, broken)
    with httpx.Client(
        base_url=running.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    ) as client:
        before: list[list[int]] = []
        conversation = 0
        while client.get("/canary").json()["decision"] is None:
            before.append(_chat(client, conversation, turns=2))
            conversation += 1
            assert conversation < 100
        assert all(set(turns) in ({200}, {502}) for turns in before)  # sticky: one version per conversation
        assert broken.started == 4
        after = [_chat(client, conversation + i, turns=2) for i in range(20)]
        assert all(turns == [200, 200] for turns in after)
        assert broken.started == 4
        status = client.get("/canary").json()
        metrics = client.get("/metrics").text
    assert status["weight_percent"] == 0 and status["window"]["canary"]["errors"] == 4
    assert 'tritonform_gateway_version_errors_total{role="canary",version="v2"} 4.0' in metrics
    assert "tritonform_gateway_canary_rolled_back 1.0" in metrics


def test_each_version_renders_prompts_with_its_own_tokenizer(
    canary_gateway: Any, small_context: Path, roomy_context: Path
) -> None:
    """The canary's tokenizer folder is its own (here: a larger context): a prompt too long for the stable
    version's 64 tokens is refused there and served by the canary."""
    stable, canary = FakeTriton(), FakeTriton(deltas=[Delta("hi", True, 3, 1, "stop")])
    running = canary_gateway(
        stable,
        canary,
        tokenizer_dir=small_context,
        canary_tokenizer_dir=roomy_context,
        max_prompt_tokens=1000,
    )
    long_text = "word " * 80
    outcomes = {}
    with httpx.Client(
        base_url=running.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    ) as client:
        for i in range(40):
            messages = [{"role": "user", "content": f"{i} {long_text}"}]
            body = {"model": MODEL, "messages": messages, "max_tokens": 4}
            outcomes[i] = client.post("/v1/chat/completions", json=body).status_code
    assert set(outcomes.values()) == {200, 400}
    assert canary.started == list(outcomes.values()).count(200)
    assert stable.started == 0


def test_without_a_canary_the_endpoint_says_so(serve: Any) -> None:
    running = serve(FakeTriton())
    assert httpx.get(running.url + "/canary").json() == {"canary": None}
