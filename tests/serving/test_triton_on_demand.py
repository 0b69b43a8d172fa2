"""`tritonform serve --idle-stop`: a real local Triton stops when idle and starts again on the next request,
which the gateway holds meanwhile (the cold path a cluster takes when Triton scaled to zero). Every held
request is answered, none is lost, and no process is left behind.

The tests wait for what the stack reports (Triton's start and stop counts, the hold's counters), with a
bound, never for a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.local_stack import LocalStack, LocalStackConfig
from serving.triton_local import free_port
from tests.procs import wait_gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
AUTH = {"Authorization": "Bearer tf-test"}


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)


def _held(stack: LocalStack, outcome: str) -> float:
    assert stack._gateway is not None
    value = stack._gateway.metrics.registry.get_sample_value(
        "tritonform_gateway_held_requests_total", {"outcome": outcome}
    )
    return float(value or 0.0)


def test_an_idle_triton_stops_and_every_request_that_wakes_it_is_answered(tiny_repository: Path) -> None:
    stack = LocalStack(
        LocalStackConfig(
            model_repository=tiny_repository, port=free_port(), api_key="tf-test", idle_stop_s=1.0
        )
    )
    stack.start()
    pids: list[int] = []
    try:
        on_demand = stack.on_demand
        assert on_demand is not None and on_demand.server is not None and on_demand.server.pid
        pids.append(on_demand.server.pid)
        _wait_for(lambda: on_demand.stops == 1, "Triton stopped after 1 s idle")
        assert on_demand.server is None and wait_gone(pids, 30) == []
        # The stack stays ready: the gateway can hold requests while Triton is down.
        assert httpx.get(stack.url + "/readyz").status_code == 200

        answers: list[httpx.Response] = []
        bodies: list[dict[str, Any]] = [
            {"model": "llm", "prompt": f"hello {i}", "max_tokens": 4, "temperature": 0} for i in range(3)
        ] + [{"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}]

        def one(body: dict[str, Any]) -> None:
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            answers.append(httpx.post(stack.url + path, json=body, headers=AUTH, timeout=120))

        threads = [threading.Thread(target=one, args=(body,)) for body in bodies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        assert on_demand.starts == 2 and on_demand.start_errors == []
        assert _held(stack, "released") >= 1
        assert _held(stack, "timeout") == _held(stack, "full") == 0
        assert on_demand.server is not None and on_demand.server.pid
        pids.append(on_demand.server.pid)
        _wait_for(lambda: on_demand.stops == 2, "Triton stopped again once idle")
    finally:
        stack.stop()
    assert wait_gone(pids, 30) == []
