"""The gateway's own rules against a scripted backend (tests/serving/fake_backend.py): what is checked
before any tokenising, what a request is charged, how it ends when the client leaves, and how a
stream answers before its first token. Decided by counts, flags and statuses, never by timing."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import httpx
import pytest

from serving.gateway.triton import Delta, TritonError
from tests.serving.conftest import API_KEY, RunningGateway
from tests.serving.fake_backend import FakeTriton

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = "/v1/chat/completions"


def _metric(gateway: RunningGateway, name: str) -> float:
    total = 0.0
    for line in httpx.get(gateway.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_for(condition: Any, what: str, attempts: int = 400) -> None:
    """Poll `condition` (bounded in count); fail naming `what`."""
    event = threading.Event()
    for _ in range(attempts):
        if condition():
            return
        event.wait(0.025)
    raise AssertionError(f"never happened: {what}")


def test_a_lone_surrogate_in_chat_content_is_a_400(serve: Any) -> None:
    backend = FakeTriton()
    gateway = serve(backend)
    body = '{"model": "llm", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}'
    answer = httpx.post(
        gateway.v1 + "/chat/completions", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    assert "Unicode" in answer.json()["error"]["message"] and backend.started == 0


class CountingPrompts:
    """Wraps the gateway's PromptFormatter: counts tokenising calls and notes their threads."""

    def __init__(self, prompts: Any) -> None:
        self._prompts, self.calls = prompts, 0
        self.threads: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._prompts, name)

    def chat(self, messages: Any, tools: Any = None) -> Any:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        return self._prompts.chat(messages, tools)

    def completion(self, prompt: str) -> Any:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        return self._prompts.completion(prompt)


def test_limits_and_length_are_checked_before_any_tokenising_which_runs_off_the_event_loop(
    serve: Any,
) -> None:
    gateway = serve(FakeTriton(), requests_per_minute=1, max_prompt_chars=500)
    prompts = CountingPrompts(gateway.app.state.gateway.prompts)
    gateway.app.state.gateway.prompts = prompts
    message = {"model": "llm", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=30) as client:
        assert client.post(CHAT, json=message).status_code == 200
        assert prompts.calls == 1 and "MainThread" not in prompts.threads
        limited = client.post(CHAT, json=message)
        assert limited.status_code == 429 and prompts.calls == 1  # refused before rendering
        long = {**message, "messages": [{"role": "user", "content": "x" * 501}]}
        too_long = client.post(CHAT, json=long)
        assert too_long.status_code == 400 and "max_prompt_chars=500" in too_long.json()["error"]["message"]
        assert prompts.calls == 1
    loop_threads = {t.name for t in threading.enumerate() if t is gateway.thread}
    assert not prompts.threads & loop_threads  # the event loop's thread never tokenised


def test_the_concurrency_cap_counts_requests_as_they_are_admitted(serve: Any) -> None:
    backend = FakeTriton()
    backend.gate.clear()
    gateway = serve(backend, max_concurrent_requests=2)
    statuses: list[int] = []

    def one() -> None:
        body = {"model": "llm", "prompt": "hello", "max_tokens": 2}
        statuses.append(
            httpx.post(gateway.v1 + "/completions", json=body, headers=AUTH, timeout=30).status_code
        )

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: len(statuses) == 4, "four requests refused while two wait")
    backend.gate.set()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [200, 200, 429, 429, 429, 429] and backend.started == 2
    assert gateway.app.state.gateway.active == 0


def test_the_finish_reason_is_the_models_and_the_stream_passes_it_on(serve: Any) -> None:
    # the end token fell on the last allowed token: 'stop', although completion == max_tokens
    backend = FakeTriton(deltas=[Delta("a", False, 3, 1), Delta("b", True, 3, 1, "stop")])
    gateway = serve(backend)
    body = {"model": "llm", "prompt": "hello", "max_tokens": 2}
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=30) as client:
        whole = client.post("/v1/completions", json=body).json()
        assert whole["choices"][0]["finish_reason"] == "stop" and whole["usage"]["completion_tokens"] == 2
        lines = [
            line
            for line in client.post("/v1/completions", json={**body, "stream": True}).text.splitlines()
            if line.startswith("data: {")
        ]
        assert [json.loads(line[6:])["choices"][0]["finish_reason"] for line in lines][-1] == "stop"


def test_prompt_and_max_tokens_must_fit_the_models_own_context(serve: Any) -> None:
    backend = FakeTriton()
    gateway = serve(backend, max_prompt_tokens=1000, default_max_tokens=32)
    gateway_core = gateway.app.state.gateway
    assert gateway_core.prompts.max_context == 64  # read from the repository's generation.json
    prompt = "hello world " * 8
    tokens = len(gateway_core.prompts.completion(prompt).ids)
    assert 32 < tokens < 64
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=30) as client:
        asked = client.post(
            "/v1/completions", json={"model": "llm", "prompt": prompt, "max_tokens": 64 - tokens + 1}
        )
        assert asked.status_code == 400 and asked.json()["error"]["code"] == "context_length_exceeded"
        assert "maximum context length is 64 tokens" in asked.json()["error"]["message"]
        fits = client.post(
            "/v1/completions", json={"model": "llm", "prompt": prompt, "max_tokens": 64 - tokens}
        )
        assert fits.status_code == 200
        # no max_tokens given: the default shrinks to what is left of the context
        assert client.post("/v1/completions", json={"model": "llm", "prompt": prompt}).status_code == 200
        assert [p.max_tokens for p in backend.seen] == [64 - tokens, 64 - tokens]
        whole = client.post("/v1/completions", json={"model": "llm", "prompt": prompt * 3})
        assert whole.status_code == 400 and whole.json()["error"]["code"] == "context_length_exceeded"
    assert len(backend.seen) == 2


def test_a_mid_stream_failure_charges_the_tokens_that_were_generated(serve: Any) -> None:
    backend = FakeTriton(
        deltas=[Delta("a", False, 3, 1), Delta("b", False, 3, 1)], error=TritonError(502, "generation failed")
    )
    gateway = serve(backend, tokens_per_minute=1000)
    core = gateway.app.state.gateway
    core.limits.limiter.clock = lambda: 0.0  # no refill during the test: the level is exact
    body = {"model": "llm", "prompt": "hello world", "max_tokens": 20, "stream": True}
    text = httpx.post(gateway.v1 + "/completions", json=body, headers=AUTH, timeout=30).text
    assert '"generation failed"' in text and text.rstrip().endswith("data: [DONE]")
    prompt = len(core.prompts.completion("hello world").ids)
    level = core.limits.limiter._buckets[next(iter(core.limits.limiter._buckets))][1].level
    assert level == 1000 - prompt - 2  # the two generated tokens stay charged
    assert core.active == 0 and _metric(gateway, "tritonform_gateway_generations_in_flight") == 0


def test_a_stream_sends_headers_and_keep_alives_before_its_first_token(serve: Any) -> None:
    backend = FakeTriton(deltas=[Delta("hi", True, 3, 1, "length")])
    backend.gate.clear()
    gateway = serve(backend, stream_first_token_wait_s=0, stream_keepalive_s=0.05)
    body = {"model": "llm", "messages": [{"role": "user", "content": "hello"}], "stream": True}
    with httpx.stream(
        "POST", gateway.v1 + "/chat/completions", json=body, headers=AUTH, timeout=10
    ) as response:
        assert response.status_code == 200 and backend.started == 1  # headers while the model waits
        lines = (line for line in response.iter_lines() if line)
        early = [next(lines) for _ in range(4)]  # the comment, the role chunk, then keep-alives
        assert early[0] == ": waiting for the model" and early[2:] == [": keep-alive", ": keep-alive"]
        assert '"role": "assistant"' in early[1] and not backend.gate.is_set()
        backend.gate.set()
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and any('"hi"' in line for line in rest)


def test_a_client_leaving_before_the_first_token_is_a_499_that_cancels_the_generation(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeTriton()
    backend.gate.clear()
    gateway = serve(backend, stream_first_token_wait_s=60)
    for stream in (True, False):
        body = {"model": "llm", "prompt": "hello", "max_tokens": 4, "stream": stream}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                gateway.v1 + "/completions", json=body, headers=AUTH, timeout=httpx.Timeout(30, read=0.5)
            )
    _wait_for(lambda: backend.cancelled == 2, "both generations cancelled")
    _wait_for(
        lambda: (
            _metric(gateway, 'tritonform_gateway_requests_total{route="/v1/completions",status="499"}') == 2
        ),
        "two 499s",
    )
    assert _metric(gateway, 'tritonform_gateway_requests_total{route="/v1/completions",status="500"}') == 0
    assert (
        _metric(gateway, "tritonform_gateway_generations_in_flight") == 0
        and gateway.app.state.gateway.active == 0
    )
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_client_leaving_during_the_body_upload_is_a_499(serve: Any) -> None:
    gateway = serve(FakeTriton())
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"model": "llm", '
        )
    _wait_for(
        lambda: _metric(gateway, 'tritonform_gateway_requests_total{route="unmatched",status="499"}') == 1,
        "a 499",
    )
    assert _metric(gateway, 'status="500"') == 0


def test_shutdown_ends_running_streams_with_an_error_and_refuses_new_requests(serve: Any) -> None:
    """`app.state.gateway.shutdown()` is the hook `tritonform serve` calls on stop."""
    backend = FakeTriton()
    backend.gate.clear()
    gateway = serve(backend, stream_first_token_wait_s=0)
    body = {"model": "llm", "prompt": "hello", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", gateway.v1 + "/completions", json=body, headers=AUTH, timeout=10) as response:
        lines = response.iter_lines()
        assert next(lines) == ": waiting for the model"
        core = gateway.app.state.gateway
        core.shutdown_from_thread(timeout_s=10)
        rest = [line for line in lines if line.startswith("data: ")]
    assert (
        any('"service_unavailable"' in line or "unreachable" in line for line in rest)
        and rest[-1] == "data: [DONE]"
    )
    refused = httpx.post(
        gateway.v1 + "/completions", json={**body, "stream": False}, headers=AUTH, timeout=10
    )
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert core.active == 0 and core.running == 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_shutdown_ends_generations_the_backend_would_leave_waiting(serve: Any, stream: bool) -> None:
    """Closing the real gRPC client does not end the streams waiting on it: the gateway's own shutdown
    gives each running request its final answer (an error event, or a 503), never a cut connection."""
    backend = FakeTriton(close_ends_generations=False)
    backend.gate.clear()
    gateway = serve(backend, stream_first_token_wait_s=0)
    core = gateway.app.state.gateway
    body = {"model": "llm", "prompt": "hello", "max_tokens": 4, "stream": stream}
    answers: list[httpx.Response | list[str]] = []

    def call() -> None:
        with httpx.stream(
            "POST", gateway.v1 + "/completions", json=body, headers=AUTH, timeout=30
        ) as response:
            answers.append(
                [line for line in response.iter_lines() if line] if stream else response.read() and response
            )

    caller = threading.Thread(target=call)
    caller.start()
    _wait_for(lambda: backend.started == 1, "the generation started")
    core.shutdown_from_thread(timeout_s=10)
    caller.join(30)
    assert not caller.is_alive() and len(answers) == 1
    answer = answers[0]
    if stream:
        assert isinstance(answer, list) and answer[-1] == "data: [DONE]"
        assert "shutting down" in json.loads(answer[-2].removeprefix("data: "))["error"]["message"]
    else:
        assert isinstance(answer, httpx.Response) and answer.status_code == 503
        assert "shutting down" in answer.json()["error"]["message"] and answer.headers["retry-after"]
    _wait_for(lambda: core.active == 0 and core.running == 0, "the slots released")
    assert backend.cancelled == 1
