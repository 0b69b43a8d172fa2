"""Load with departures and a stop: a real Triton serving the tiny model behind the gateway, 64
concurrent streams, a third of the clients leaving after their first token, and SIGTERM to Triton (what
a redeploy or a scale-in does to its pod) once a quarter of the streams are under way; then 8 more
clients arrive while it stops.

Every client must end (a finished stream, its own departure, an error event or an error status), the
engine must have answered every request it was given (the model logs its counts when it stops: Triton
drains the requests in flight, then unloads the model), the gateway's gauges must be back to zero, and
every 5xx must be one the stop explains (503). Decided by outcomes and counts, never by timing; bounded
in requests (72) and time (each wait has a limit).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.triton_local import TritonServer, TritonServerConfig
from tests.serving.conftest import API_KEY, RunningGateway, gateway_settings, start_gateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
STREAMS = 64
LEAVE_EVERY = 3  # clients 0, 3, 6 ... leave after their first token
STOP_AFTER_FIRST_TOKENS = STREAMS // 4
MAX_TOKENS = 64
LATE = 8  # clients that arrive after the SIGTERM


@pytest.fixture(scope="module")
def roomy_repository(tiny_llama_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a queue that holds every stream of the test (so no 503 but the stop's)."""
    from model_repo.layout import write_repository
    from model_repo.spec import GenerationSpec

    spec = GenerationSpec(
        model_name="llm", intra_op_threads=1, decode_lanes=2, max_queued_requests=STREAMS * 2
    )
    return write_repository(tmp_path_factory.mktemp("roomy") / "repo", tiny_llama_export, spec)


@pytest.fixture
def stack(roomy_repository: Path) -> Iterator[tuple[TritonServer, RunningGateway]]:
    triton = TritonServer(TritonServerConfig(roomy_repository, startup_timeout_s=120, exit_timeout_s=120))
    triton.start()
    gateway = start_gateway(
        gateway_settings(
            triton.grpc_url,
            roomy_repository,
            max_tokens_cap=MAX_TOKENS,
            stream_first_token_wait_s=0.5,
            generation_timeout_s=120,
        )
    )
    try:
        yield triton, gateway
    finally:
        gateway.stop()
        triton.stop()


async def _client(
    http: httpx.AsyncClient, index: int, first_tokens: list[int], stop_sent: asyncio.Event
) -> tuple[str, bool]:
    """One streaming client; returns (outcome, whether Triton had been stopped when it ended)."""
    body = {
        "model": "llm",
        "prompt": f"request {index}: the quick brown fox {'jumps ' * (index % 7)}",
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
    }
    async with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return f"status {response.status_code}: {response.json()['error']['message']}", stop_sent.is_set()
        seen_token = False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return "done", stop_sent.is_set()
            event = json.loads(line.removeprefix("data: "))
            if "error" in event:
                return (
                    f"error event {event['error']['type']}: {event['error']['message']}",
                    stop_sent.is_set(),
                )
            if not seen_token and event["choices"] and event["choices"][0]["text"]:
                seen_token = True
                first_tokens.append(index)
                if index % LEAVE_EVERY == 0:
                    return "left", stop_sent.is_set()  # closing the response drops the connection
    return "stream ended without [DONE]", stop_sent.is_set()


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_every_request_ends_right_under_load_departures_and_a_stop(
    stack: tuple[TritonServer, RunningGateway],
) -> None:
    triton, gateway = stack
    assert triton.pid is not None

    async def run() -> list[tuple[str, bool]]:
        first_tokens: list[int] = []
        stop_sent = asyncio.Event()

        async def stop_when_under_way() -> list[tuple[str, bool]]:
            while len(first_tokens) < STOP_AFTER_FIRST_TOKENS:
                await asyncio.sleep(0.01)
            os.kill(triton.pid, signal.SIGTERM)  # type: ignore[arg-type]  # the server, as Kubernetes does
            stop_sent.set()
            late = [_client(http, STREAMS + i, first_tokens, stop_sent) for i in range(LATE)]
            return list(await asyncio.gather(*late))

        limits = httpx.Limits(max_connections=STREAMS + 8)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(
            base_url=gateway.url, headers=headers, limits=limits, timeout=120
        ) as http:
            stopper = asyncio.create_task(stop_when_under_way())
            clients = [_client(http, i, first_tokens, stop_sent) for i in range(STREAMS)]
            outcomes = await asyncio.wait_for(asyncio.gather(*clients), timeout=180)
            late = await asyncio.wait_for(stopper, timeout=60)
        return outcomes + late

    # a loop of our own: asyncio.run() would leave the main thread without a current loop, which the
    # Pulumi mocks of later tests need
    loop = asyncio.new_event_loop()
    try:
        outcomes = loop.run_until_complete(run())
    finally:
        loop.close()
    kinds = Counter(outcome.split(":")[0] for outcome, _ in outcomes)
    assert sum(kinds.values()) == STREAMS + LATE  # every client got an answer: nothing hung
    assert kinds["left"] >= 1 and kinds["done"] >= 1, kinds
    for outcome, after_stop in outcomes:
        assert outcome in ("done", "left") or after_stop, outcome  # every failure came with the stop
        if outcome.startswith("status"):
            assert outcome.startswith("status 503"), outcome  # the stop's 503, never a 500 or 502
        if outcome.startswith("error event"):
            assert outcome.startswith(("error event service_unavailable", "error event unavailable")), outcome
    assert not [o for o, _ in outcomes if o == "stream ended without [DONE]"]

    assert all(o.startswith(("status 503", "error event")) for o, _ in outcomes[STREAMS:])  # stopping

    # the engine answered every request it was given before it stopped
    assert triton._process is not None
    code = triton._process.wait(timeout=60)
    log = triton.log_text()
    if code != 0 and "ASSERTION FAILED: prior > 0" in log:
        # Triton 2.51's gRPC core sometimes aborts while it stops with streams open (about 1 run in 10
        # here, an upstream bug): the model never gets to finalize, so only the clients' side above
        # can be checked, and it held
        pass
    else:
        stopped = re.search(r"scheduler stopped: .*open=(\d+)", log)
        assert code == 0 and stopped, log[-3000:]
        assert stopped.group(1) == "0"
    # the gateway is back to rest
    assert _metric(gateway.url, "tritonform_gateway_generations_in_flight") == 0
    core = gateway.app.state.gateway
    assert core.active == 0 and core.running == 0
    statuses = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert not re.search(
        r'tritonform_gateway_requests_total\{route="/v1/completions",status="5(0[0-2]|04)"\}', statuses
    )
