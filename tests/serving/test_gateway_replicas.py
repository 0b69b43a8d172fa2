"""Triton replicas found through a headless Service's DNS name (serving/gateway/replicas.py): pods that
come and go are picked up, none at all is a 503 the cold-start hold can wait on, and a found replica
really serves (a real local Triton behind a scripted resolver)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serving.gateway.replicas import DiscoveredTriton, split_address
from serving.gateway.triton import GenerationParams, TritonError


class Dns:
    """A scripted resolver: the addresses it answers, and how often it was asked."""

    def __init__(self, *addresses: str) -> None:
        self.addresses, self.asked = list(addresses), 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked += 1
        return list(self.addresses)


def test_pods_that_come_and_go_are_followed() -> None:
    async def scenario() -> None:
        dns = Dns()
        found = DiscoveredTriton("triton-pods.ns.svc:8001", "llm", refresh_s=0, resolver=dns)
        reason = await found.not_ready_reason()
        assert reason is not None and "no Triton replica behind triton-pods.ns.svc" in reason
        with pytest.raises(TritonError) as error:
            async for _ in found.generate(GenerationParams("hi", 2), "r1", 5):
                pass
        assert error.value.status == 503 and error.value.kind == "unavailable"
        dns.addresses = ["10.0.0.7", "10.0.0.8"]
        await found.refresh(force=True)
        assert sorted(found.replicas) == ["10.0.0.7:8001", "10.0.0.8:8001"]
        assert found.router.replicas == ["10.0.0.7:8001", "10.0.0.8:8001"]
        dns.addresses = ["10.0.0.8", "fd00::9"]
        await found.refresh(force=True)
        assert sorted(found.replicas) == ["10.0.0.8:8001", "[fd00::9]:8001"]
        assert found._leaving == {}  # the pod that left had nothing running: closed at once
        await found.close()

    asyncio.run(scenario())


def test_a_bad_discovery_address_names_the_setting() -> None:
    with pytest.raises(ValueError, match="triton_discovery 'triton-pods' must be host:port"):
        split_address("triton-pods")


@pytest.mark.slow
def test_a_discovered_replica_serves_generations(triton: Any) -> None:
    async def scenario() -> list[str]:
        found = DiscoveredTriton(f"triton-pods:{triton.grpc_port}", "llm", resolver=Dns("127.0.0.1"))
        try:
            assert await found.not_ready_reason() is None
            texts = [d.text async for d in found.generate(GenerationParams("hello world", 4), "r1", 60)]
        finally:
            await found.close()
        assert found.served == {f"127.0.0.1:{triton.grpc_port}": 1}
        return texts

    assert "".join(asyncio.run(scenario()))
