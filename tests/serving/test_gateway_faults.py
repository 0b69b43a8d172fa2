"""Faults: Triton dies mid-run and comes back; clients that go away; many concurrent streams."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from serving.triton_local import TritonServer, TritonServerConfig, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
MODEL = "llm"
API_KEY = "test-key-" + "x" * 24  # the key conftest configures
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _config(repository: Path, ports: tuple[int, int, int]) -> TritonServerConfig:
    return TritonServerConfig(
        repository, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2], startup_timeout_s=120
    )


@pytest.fixture
def own_triton(tiny_repository: Path) -> Iterator[dict[str, Any]]:
    """A Triton on fixed ports, so a restart comes back at the same address."""
    ports = (free_port(), free_port(), free_port())
    state: dict[str, Any] = {"server": TritonServer(_config(tiny_repository, ports)), "ports": ports}
    state["server"].start()
    yield state
    state["server"].stop()


def _gauge(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_triton_dying_mid_run_gives_503_then_recovers(
    own_triton: dict[str, Any], make_gateway: Any, tiny_repository: Path
) -> None:
    server: TritonServer = own_triton["server"]
    gateway = make_gateway(server.grpc_url, max_tokens_cap=400, generation_timeout_s=30)
    body = {"model": MODEL, "prompt": "hello world, the", "max_tokens": 400, "stream": True}
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=30) as client:
        assert (
            client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 4}).status_code == 200
        )

        # a stream is running when Triton is killed: it ends (error event, then [DONE]) instead of
        # hanging (a hang would hit the client's read timeout and fail the test)
        with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            assert server.pid is not None
            os.killpg(server.pid, signal.SIGKILL)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        server.stop()

        # while Triton is down: 503 with a clear message, fast, and /readyz says why
        down = client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 4})
        assert down.status_code == 503, down.text
        assert "unreachable" in down.json()["error"]["message"] and down.headers["retry-after"]
        streaming_down = client.post("/v1/completions", json=body)
        assert streaming_down.status_code == 503
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "Triton" in ready.json()["error"]["message"]

        # Triton back at the same address: the gateway recovers by itself
        # serving/triton_local.py checks ports without SO_REUSEADDR, so a port in TIME_WAIT after the
        # kill looks taken; let it pick fresh ports and hand Triton the old gRPC port (last flag wins).
        restarted = TritonServer(
            TritonServerConfig(
                tiny_repository, startup_timeout_s=120, extra_args=(f"--grpc-port={own_triton['ports'][1]}",)
            )
        )
        own_triton["server"] = restarted
        restarted.start()
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            status = client.post(
                "/v1/completions", json={**body, "stream": False, "max_tokens": 4}
            ).status_code
            time.sleep(0.2)
        assert status == 200
        assert client.get("/readyz").status_code == 200
    assert _gauge(gateway.url, "tritonform_gateway_generations_in_flight") == 0


def test_client_disconnect_cancels_the_generation(triton: Any, make_gateway: Any) -> None:
    gateway = make_gateway(triton.grpc_url, max_tokens_cap=400)
    body = {"model": MODEL, "prompt": "hello world, the", "max_tokens": 400, "stream": True}
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            next(line for line in response.iter_lines() if line.startswith("data: {"))
        # leaving the block closed the connection mid-stream
        deadline = time.monotonic() + 10
        while _gauge(gateway.url, "tritonform_gateway_generations_in_flight") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gauge(gateway.url, "tritonform_gateway_generations_in_flight") == 0
        assert (
            client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 4}).status_code == 200
        )


def test_32_concurrent_streams_all_complete_and_stay_separate(gateway: Any, engine: Any) -> None:
    from model_repo.runtime.sampling import SamplingParams

    prompts = [f"request {i}: the quick brown fox {'jumps ' * (i % 5)}" for i in range(32)]
    expected = [engine.generate_text(p, SamplingParams(max_tokens=24)) for p in prompts]

    async def one(client: openai.AsyncOpenAI, prompt: str) -> tuple[set[str], str]:
        stream = await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True
        )
        ids, text = set(), []
        async for chunk in stream:
            ids.add(chunk.id)
            text.extend(c.text for c in chunk.choices)
        return ids, "".join(text)

    async def run() -> list[tuple[set[str], str]]:
        async with openai.AsyncOpenAI(
            base_url=gateway.v1, api_key=API_KEY, max_retries=0, timeout=60
        ) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, p) for p in prompts)), timeout=120)

    results = asyncio.run(run())
    assert [text for _, text in results] == expected  # nothing lost, nothing from another stream
    ids = [i for i, _ in results]
    assert all(len(i) == 1 for i in ids) and len(set.union(*ids)) == 32


def test_a_model_reloaded_with_another_layout_is_served_without_a_gateway_restart(
    tiny_repository: Path, make_gateway: Any, tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(tiny_repository, repository)
    config = TritonServerConfig(
        repository, startup_timeout_s=120, model_control_mode="explicit", load_models=("llm",)
    )
    body = {"model": MODEL, "prompt": "hello world, the", "max_tokens": 4}
    with TritonServer(config) as server:
        gateway = make_gateway(server.grpc_url)
        with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60) as client:
            assert client.post("/v1/completions", json=body).status_code == 200  # layout read: batched
            pbtxt = repository / "llm" / "config.pbtxt"
            text = pbtxt.read_text()
            assert "max_batch_size: 8" in text
            pbtxt.write_text(text.replace("max_batch_size: 8", "max_batch_size: 0"))
            reload = httpx.post(server.http_url + "/v2/repository/models/llm/load", json={}, timeout=120)
            assert reload.status_code == 200, reload.text
            again = client.post("/v1/completions", json=body)
            assert again.status_code == 200, again.text  # was 502 until the gateway restarted
            assert again.json()["usage"]["completion_tokens"] == 4
            assert client.post("/v1/completions", json={**body, "stream": True}).status_code == 200
