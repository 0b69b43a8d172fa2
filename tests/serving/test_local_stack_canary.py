"""The canary rehearsal on the local stack, against real Triton processes: the stable version and a copy
that fails every other request (serving/canary_faults.py) run side by side; the gateway rolls the canary
back by itself once its window shows the errors, and no request fails after that."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from serving.canary_faults import write_failing_copy
from serving.local_stack import LocalStack, LocalStackConfig, StackError
from serving.triton_local import free_port


def _turn(client: httpx.Client, model: str, conversation: int) -> int:
    messages = [{"role": "user", "content": f"conversation {conversation}: hello"}]
    body = {"model": model, "messages": messages, "max_tokens": 4, "temperature": 0}
    return client.post("/v1/chat/completions", json=body).status_code


def test_a_broken_canary_is_rolled_back_and_every_later_request_succeeds(tiny_repository: Path) -> None:
    config = LocalStackConfig(
        tiny_repository,
        port=free_port(),
        canary_repository=tiny_repository,
        canary_weight=50,
        canary_fail_every=2,
        canary_min_requests=6,
        canary_window_s=600,
        startup_timeout_s=180,
    )
    with LocalStack(config) as stack:
        assert stack.canary is not None and stack.canary.grpc_url != stack.triton.grpc_url  # type: ignore[union-attr]
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as client:
            before = []
            while client.get("/canary").json()["decision"] is None:
                before.append(_turn(client, stack.model_name, len(before)))
                assert len(before) < 200, "the canary was never rolled back"
            after = [_turn(client, stack.model_name, len(before) + i) for i in range(30)]
            status = client.get("/canary").json()
    assert set(before) == {200, 502}  # the canary's faults reached its clients until the rollback
    assert after == [200] * 30
    assert status["weight_percent"] == 0 and status["configured_weight_percent"] == 50
    judged = status["decision"]["figures"]["canary"]
    assert judged["requests"] == 6 and judged["errors"] == 3  # decided at the first judgement it could make
    assert status["window"]["canary"]["requests"] == 6  # nothing reached the canary after it


def test_a_canary_of_another_model_name_is_refused_before_anything_starts(
    tiny_repository: Path, tmp_path: Path
) -> None:
    other = write_failing_copy(tiny_repository, tmp_path / "other", 1)
    (other / "llm").rename(other / "chat")
    config = LocalStackConfig(tiny_repository, port=free_port(), canary_repository=other)
    with pytest.raises(StackError, match="same --model-name"):
        LocalStack(config).start()
