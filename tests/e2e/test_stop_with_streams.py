"""Stopping the local stack (what `tritonform serve` does on Ctrl-C or SIGTERM) ends every running stream
with a final error event and `[DONE]`, not a cut connection (issue 20)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from serving.local_stack import LocalStack, LocalStackConfig
from serving.triton_local import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
# Greedy, this prompt does not reach the tiny model's end token within 1500 tokens: the stream is still
# running when the stack stops, whatever the machine's speed.
BODY = {"model": "llm", "prompt": "hello world, the", "max_tokens": 1500, "temperature": 0, "stream": True}


def test_a_stop_ends_running_streams_with_an_error_event(tiny_repository: Path) -> None:
    stack = LocalStack(
        LocalStackConfig(model_repository=tiny_repository, port=free_port(), api_key="tf-test")
    )
    stack.start()
    stopper = threading.Thread(target=stack.stop)
    try:
        with (
            httpx.Client(
                base_url=stack.url, headers={"Authorization": "Bearer tf-test"}, timeout=60
            ) as client,
            client.stream("POST", "/v1/completions", json=BODY) as response,
        ):
            assert response.status_code == 200
            events = response.iter_lines()
            first = next(line for line in events if line.startswith("data: {"))
            assert json.loads(first.removeprefix("data: "))["choices"][0]["finish_reason"] is None
            stopper.start()
            rest = [line for line in events if line.startswith("data: ")]
    finally:
        if stopper.ident is None:
            stack.stop()  # the test failed before it asked for the stop
        else:
            stopper.join(timeout=stack.stop_timeout_s)
    assert rest[-1] == "data: [DONE]"
    payloads = [json.loads(line.removeprefix("data: ")) for line in rest[:-1]]
    assert "error" in payloads[-1], payloads[-3:]
    assert not any(p.get("choices", [{}])[0].get("finish_reason") for p in payloads if "choices" in p)
