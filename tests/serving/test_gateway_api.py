"""The OpenAI-compatible API against a real Triton serving the tiny model, through the official client."""

from __future__ import annotations

import io
import json
import logging
import queue
import time
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient

from serving.gateway.observability import JsonFormatter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
PROMPT = "hello world, the"
MODEL = "llm"
API_KEY = "test-key-" + "x" * 24  # the key conftest configures
RunningGateway = Any


def _client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=API_KEY, max_retries=0, timeout=60)


def triton_greedy(grpc_url: str, prompt: str, max_tokens: int) -> str:
    """The model's greedy output, asking Triton directly (no gateway)."""

    def tensor(name: str, value: np.ndarray, datatype: str) -> grpcclient.InferInput:
        t = grpcclient.InferInput(name, list(value.shape), datatype)
        t.set_data_from_numpy(value)
        return t

    client = grpcclient.InferenceServerClient(grpc_url)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(
            MODEL,
            [
                tensor("text_input", np.array([[prompt.encode()]], dtype=np.object_), "BYTES"),
                tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
                tensor("temperature", np.array([[0.0]], dtype=np.float32), "FP32"),
            ],
        )
        result, error = answers.get(timeout=60)
        assert error is None, error
        return str(result.as_numpy("text_output").reshape(-1)[0].decode())
    finally:
        client.stop_stream()
        client.close()


def test_models_lists_the_served_model(gateway: RunningGateway) -> None:
    models = _client(gateway).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_completion_at_temperature_0_equals_tritons_greedy_output(
    gateway: RunningGateway, triton: Any, engine: Any
) -> None:
    answer = _client(gateway).completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
    expected = triton_greedy(triton.grpc_url, PROMPT, 24)
    assert expected and answer.choices[0].text == expected
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == len(engine.encode(PROMPT))
    assert answer.usage.completion_tokens == 24 and answer.choices[0].finish_reason == "length"
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 24


def test_chat_uses_the_models_chat_template(gateway: RunningGateway, engine: Any) -> None:
    from model_repo.chat_template import apply_chat_template
    from model_repo.runtime.sampling import SamplingParams

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how are you today"}]
    answer = _client(gateway).chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=20,
        temperature=0,  # type: ignore[arg-type]
    )
    prompt = apply_chat_template(engine.metadata, messages)
    assert prompt.startswith("<|im_start|>system\nbe brief")
    assert answer.choices[0].message.content == engine.generate_text(prompt, SamplingParams(max_tokens=20))
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage is not None and answer.usage.prompt_tokens == len(engine.encode(prompt))


def test_streaming_chat_matches_the_non_streaming_answer(gateway: RunningGateway) -> None:
    client = _client(gateway)
    messages: Any = [{"role": "user", "content": "the quick brown fox"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(texts) == whole.choices[0].message.content
    assert len([t for t in texts if t]) > 2  # really streamed, not one blob
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24
    assert len({c.id for c in chunks}) == 1


def test_streaming_completion_sse_ends_with_done(gateway: RunningGateway) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", gateway.v1 + "/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert (
        text
        == _client(gateway)
        .completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
        .choices[0]
        .text
    )


def test_stop_strings_and_seeded_sampling(gateway: RunningGateway) -> None:
    client = _client(gateway)
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    cut = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=32, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    first, again = (
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.9, seed=7
        )
        for _ in range(2)
    )
    assert first.choices[0].text == again.choices[0].text


def test_health_readiness_and_metrics(gateway: RunningGateway, http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "ready", "model": MODEL}
    http.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 4})
    http.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 100000})
    text = httpx.get(gateway.url + "/metrics").text
    assert 'tritonform_gateway_requests_total{route="/v1/completions",status="200"}' in text
    assert 'tritonform_gateway_requests_total{route="/v1/completions",status="400"}' in text
    for name in ("request_seconds_bucket", "time_to_first_token_seconds_bucket", "completion_tokens_total"):
        assert f"tritonform_gateway_{name}" in text


def test_openapi_document_describes_what_is_accepted(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["additionalProperties"] is False
    assert {"model", "messages"} <= set(chat["required"])
    assert "temperature" in chat["properties"] and "stop" in chat["properties"]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert set(doc["paths"]) >= {"/v1/models", "/v1/completions", "/v1/chat/completions"}
    # and what it does not describe is refused, naming the field
    answer = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "frobnicate": 1})
    assert answer.status_code == 400 and "frobnicate" in answer.json()["error"]["message"]


def test_logs_are_json_with_request_id_and_no_secrets(http: httpx.Client) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tritonform.gateway")
    logger.addHandler(handler)
    try:
        secret_prompt = "my secret prompt words"
        answer = http.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": secret_prompt, "max_tokens": 4},
            headers={"X-Request-ID": "req-abc-123"},
        )
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-abc-123"
        http.get("/v1/models", headers={"Authorization": "Bearer wrong-key-value"})

        def access_lines() -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in stream.getvalue().splitlines()]
            return [e for e in lines if e["msg"] == "request" and e.get("request_id") == "req-abc-123"]

        # the access line is written once the response has been sent in full, so the client can
        # hold the whole answer a moment before the line exists: wait for it (bounded)
        deadline = time.monotonic() + 10
        while not access_lines() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logger.removeHandler(handler)
    access = access_lines()
    assert access and access[0]["status"] == 200 and access[0]["usage"]["completion_tokens"] == 4
    text = stream.getvalue()
    assert API_KEY not in text and "wrong-key-value" not in text and secret_prompt not in text
