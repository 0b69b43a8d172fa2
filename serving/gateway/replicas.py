"""Finding Triton's replicas on a cluster: the addresses behind a headless Service, looked up again as pods
come and go, routed by prompt prefix (serving/gateway/routing.py).

A headless Service's DNS name answers with one address per ready pod (none while Triton is scaled to
zero), so the gateway sees each replica, not one virtual IP that would spread a conversation's turns
at random. The lookup runs at most every `refresh_s` (before a generation or a readiness check); a
replica that left is closed once no generation uses it; with no replica at all, generations fail with
503 "unavailable", which the cold-start hold (serving/gateway/holding.py) turns into a wait.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, cast

from serving.gateway.routing import RoundRobinTriton, RoutedTriton
from serving.gateway.triton import Delta, GenerationParams, TritonError, TritonGenerator

if TYPE_CHECKING:
    from serving.gateway.settings import GatewaySettings

REFRESH_S = 5.0
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every IPv4/IPv6 address `host` names now (none when the name does not resolve)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})


def split_address(address: str) -> tuple[str, int]:
    """`host:port` -> (host, port); ValueError naming the setting when it is not one."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"triton_discovery {address!r} must be host:port, e.g. triton-pods.ns.svc:8001")
    return host, int(port)


class DiscoveredTriton(RoutedTriton):
    """The replicas behind a DNS name, refreshed; the interface of `TritonGenerator`."""

    def __init__(
        self,
        address: str,
        model_name: str,
        check_timeout_s: float = 2.0,
        refresh_s: float = REFRESH_S,
        resolver: Resolver = resolve,
    ) -> None:
        super().__init__([], model_name, check_timeout_s)
        self.host, self.port = split_address(address)
        self.refresh_s, self.resolver = refresh_s, resolver
        self._checked = float("-inf")
        self._leaving: dict[str, TritonGenerator] = {}  # gone from DNS, closed once idle

    def _url(self, ip: str) -> str:
        return f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}"

    async def refresh(self, force: bool = False) -> None:
        """Look the replicas up again if `refresh_s` passed (or `force`)."""
        now = time.monotonic()
        interval = self.refresh_s if self.replicas else min(1.0, self.refresh_s)  # look often while none
        if not force and now - self._checked < interval:
            return
        self._checked = now
        urls = [self._url(ip) for ip in await self.resolver(self.host, self.port)]
        for url in urls:
            if url not in self.replicas:
                kept = self._leaving.pop(url, None)  # a pod that came back before it was closed
                self.replicas[url] = kept or TritonGenerator(url, self.model_name, self.check_timeout_s)
                self.served.setdefault(url, 0)
        for url in [u for u in self.replicas if u not in urls]:
            self._leaving[url] = self.replicas.pop(url)
        if urls:
            self.router.set_replicas(urls)
        for url in [u for u in self._leaving if self.router.load.get(u, 0) == 0]:
            await self._leaving.pop(url).close()

    async def not_ready_reason(self) -> str | None:
        await self.refresh()
        if not self.replicas:
            return f"no Triton replica behind {self.host} (scaled to zero, or starting)"
        return await super().not_ready_reason()

    async def generate(
        self, params: GenerationParams, request_id: str, timeout_s: float
    ) -> AsyncGenerator[Delta, None]:
        await self.refresh()
        if not self.replicas:
            await self.refresh(force=True)
        if not self.replicas:
            raise TritonError(503, f"no Triton replica behind {self.host}; try again shortly", "unavailable")
        async for delta in super().generate(params, request_id, timeout_s):
            yield delta

    async def close(self) -> None:
        await super().close()
        for replica in self._leaving.values():
            await replica.close()
        self._leaving.clear()


def triton_backend(settings: GatewaySettings) -> TritonGenerator:
    """The gateway's way to Triton: one generator, the router over `triton_replica_urls`, or over the
    replicas `triton_discovery` names (a cluster's headless Service); the same interface, duck-typed:
    generate, not_ready_reason, close."""
    urls, name, timeout = settings.triton_replica_urls, settings.model_name, settings.triton_check_timeout_s
    if settings.triton_discovery:
        return cast(TritonGenerator, DiscoveredTriton(settings.triton_discovery, name, timeout))
    if len(urls) < 2:
        return TritonGenerator(urls[0] if urls else settings.triton_grpc_url, name, timeout)
    kind = RoutedTriton if settings.routing == "prefix" else RoundRobinTriton
    return cast(TritonGenerator, kind(urls, name, timeout))
