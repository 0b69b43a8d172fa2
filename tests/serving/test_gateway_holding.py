"""The cold-start hold (serving/gateway/holding.py): while no Triton replica is ready, requests wait in a
bounded hold, are counted (the gauge KEDA scales Triton from zero on), and are all answered: by the model
once Triton is ready, or with a 503 and Retry-After when full or past the timeout. Nothing is dropped.

The backend is scripted (Triton cold until the test says otherwise); the tests wait on what the gateway
reports (its gauges and counters), never on time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx
import pytest

from serving.gateway.triton import Delta, GenerationParams, TritonError
from tests.serving.fake_backend import FakeTriton

API_KEY = "test-key-" + "x" * 24
AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"model": "llm", "prompt": "hello", "max_tokens": 2}


class ColdTriton(FakeTriton):
    """Unreachable (503, not ready) until `ready` is set; then answers like FakeTriton. `queue_full`: a
    ready Triton that refuses with 503 (its queue is full), which must not be held."""

    def __init__(self, queue_full: bool = False) -> None:
        super().__init__()
        self.ready = threading.Event()
        self.queue_full = queue_full
        self.refused = 0
        self.checks = 0

    async def generate(
        self, params: GenerationParams, request_id: str, timeout_s: float
    ) -> AsyncGenerator[Delta, None]:
        if self.queue_full:
            self.refused += 1
            raise TritonError(503, "the model's queue is full", "unavailable")
        if not self.ready.is_set():
            self.refused += 1
            raise TritonError(503, "Triton at fake is unreachable; try again shortly", "unavailable")
        async for delta in super().generate(params, request_id, timeout_s):
            yield delta

    async def not_ready_reason(self) -> str | None:
        self.checks += 1
        return None if self.ready.is_set() or self.queue_full else "Triton at fake is unreachable"


def _metric(gateway: Any, name: str, labels: dict[str, str] | None = None) -> float:
    value = gateway.app.state.gateway.metrics.registry.get_sample_value(name, labels or {})
    return float(value or 0.0)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.02)


def _post_in_threads(
    url: str, count: int, body: dict[str, Any]
) -> tuple[list[httpx.Response], list[threading.Thread]]:
    answers: list[httpx.Response] = []

    def one() -> None:
        answers.append(httpx.post(url, json=body, headers=AUTH, timeout=60))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    return answers, threads


def test_held_requests_are_all_answered_once_triton_is_ready(serve: Any) -> None:
    """Three requests arrive while Triton is cold: the held gauge shows them (KEDA's 0 -> 1 signal), the
    in-flight gauge does not, and once Triton is ready every one is answered by the model."""
    backend = ColdTriton()
    gateway = serve(backend, cold_start_timeout_s=120, max_held_requests=8)
    answers, threads = _post_in_threads(gateway.v1 + "/completions", 3, BODY)
    _wait_for(lambda: _metric(gateway, "tritonform_gateway_requests_held") == 3, "three requests held")
    assert _metric(gateway, "tritonform_gateway_generations_in_flight") == 0
    metrics = httpx.get(gateway.url + "/metrics").text
    assert "tritonform_gateway_requests_held 3.0" in metrics
    backend.ready.set()
    for thread in threads:
        thread.join(60)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a.json()["choices"][0]["text"] == "hello" for a in answers)
    assert backend.completed == 3
    assert _metric(gateway, "tritonform_gateway_requests_held") == 0
    assert _metric(gateway, "tritonform_gateway_held_requests_total", {"outcome": "released"}) == 3


def test_a_request_held_past_the_timeout_gets_503_with_retry_after(serve: Any) -> None:
    backend = ColdTriton()
    gateway = serve(backend, cold_start_timeout_s=0.5)
    answer = httpx.post(gateway.v1 + "/completions", json=BODY, headers=AUTH, timeout=30)
    assert answer.status_code == 503, answer.text
    assert "within 0.5 s" in answer.json()["error"]["message"]
    assert int(answer.headers["Retry-After"]) >= 1
    assert _metric(gateway, "tritonform_gateway_held_requests_total", {"outcome": "timeout"}) == 1
    assert _metric(gateway, "tritonform_gateway_requests_held") == 0


def test_a_full_hold_answers_503_at_once_and_holds_the_rest(serve: Any) -> None:
    """max_held_requests=2: a third request gets 503 at once while two wait; those two are served."""
    backend = ColdTriton()
    gateway = serve(backend, cold_start_timeout_s=120, max_held_requests=2)
    answers, threads = _post_in_threads(gateway.v1 + "/completions", 2, BODY)
    _wait_for(lambda: _metric(gateway, "tritonform_gateway_requests_held") == 2, "two requests held")
    refused = httpx.post(gateway.v1 + "/completions", json=BODY, headers=AUTH, timeout=30)
    assert refused.status_code == 503 and "max_held_requests=2" in refused.json()["error"]["message"]
    assert "Retry-After" in refused.headers
    assert _metric(gateway, "tritonform_gateway_held_requests_total", {"outcome": "full"}) == 1
    backend.ready.set()
    for thread in threads:
        thread.join(60)
    assert sorted(a.status_code for a in answers) == [200, 200]


def test_a_full_queue_of_a_ready_triton_is_not_held(serve: Any) -> None:
    """A 503 from a Triton that says it is ready (its queue is full) is answered at once, never held."""
    backend = ColdTriton(queue_full=True)
    gateway = serve(backend, cold_start_timeout_s=120)
    answer = httpx.post(gateway.v1 + "/completions", json=BODY, headers=AUTH, timeout=30)
    assert answer.status_code == 503 and "queue is full" in answer.json()["error"]["message"]
    assert backend.refused == 1
    assert _metric(gateway, "tritonform_gateway_held_requests_total", {"outcome": "released"}) == 0


def test_a_held_stream_gets_keep_alive_comments_then_its_tokens(serve: Any) -> None:
    """A streaming client waiting for a cold Triton receives SSE comments (so idle timeouts do not cut
    it), then the generation and [DONE]."""
    backend = ColdTriton()
    gateway = serve(
        backend, cold_start_timeout_s=120, stream_first_token_wait_s=0.05, stream_keepalive_s=0.05
    )
    lines: list[str] = []
    with httpx.stream(
        "POST", gateway.v1 + "/completions", json={**BODY, "stream": True}, headers=AUTH, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                continue
            lines.append(line)
            if line.startswith(": keep-alive") and not backend.ready.is_set():
                backend.ready.set()  # a comment arrived while held: now let Triton come up
    assert any(line.startswith(": keep-alive") for line in lines)
    assert any('"hello"' in line for line in lines) and lines[-1] == "data: [DONE]"


def test_readyz_is_ready_while_triton_is_cold_when_the_hold_is_on(serve: Any) -> None:
    """Kubernetes must keep sending requests to a gateway that can hold them (Triton at zero replicas);
    without the hold, a cold Triton makes the gateway not ready, as before."""
    holding = serve(ColdTriton(), cold_start_timeout_s=60)
    ready = httpx.get(holding.url + "/readyz")
    assert ready.status_code == 200 and "unreachable" in ready.json()["triton"]
    strict = serve(ColdTriton())
    assert httpx.get(strict.url + "/readyz").status_code == 503


@pytest.mark.parametrize("timeout", [0.0])
def test_without_the_hold_a_cold_triton_is_a_503_at_once(serve: Any, timeout: float) -> None:
    backend = ColdTriton()
    gateway = serve(backend, cold_start_timeout_s=timeout)
    answer = httpx.post(gateway.v1 + "/completions", json=BODY, headers=AUTH, timeout=30)
    assert answer.status_code == 503 and backend.refused == 1 and backend.checks == 0
