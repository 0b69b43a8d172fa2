"""Prefix-aware routing over several Triton replicas: send a request where its prompt's prefix is cached.

Each replica's engine keeps the KV of the prompts it served (model_repo/runtime/prefix_cache.py), so a
request prefills fast only on a replica that saw its beginning. `PrefixRouter` picks that replica:

- the prompt's token ids are cut into blocks of `block_tokens`; block i's key is a hash chained over
  blocks 0..i, so a key names a whole prompt beginning (as llm-d and vLLM's prefix caching do);
- the router remembers, for the most recent `max_remembered` keys, which replica served them; a
  request goes to the replica that served its longest remembered beginning, when that is at least half
  of its prompt (a conversation's next turn starts with its previous prompt, so it returns there);
- a request whose remembered beginning is under half its prompt (a new conversation that shares only a
  system prompt) goes where consistent hashing of its whole prompt's key puts it (a ring of
  `virtual_nodes` points per replica), so conversations spread evenly and stay put when replicas change;
- a load bound (consistent hashing with bounded loads): no replica takes more than
  ceil(`load_factor` x (in flight + 1) / replicas) requests at once; past it, the next replica on the ring
  takes the request, so one hot prefix cannot overload a replica.

`RoutedTriton` puts the router in front of one `TritonGenerator` per replica with the generator's own
interface, so the gateway (and its cold-start hold) works unchanged. `RoundRobinTriton` is the
benchmark's baseline.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence

import numpy as np

from serving.gateway.triton import Delta, GenerationParams, TritonError, TritonGenerator

BLOCK_TOKENS = 16
VIRTUAL_NODES = 64
LOAD_FACTOR = 1.25
MAX_REMEMBERED = 100_000


def block_keys(ids: Sequence[int], block_tokens: int = BLOCK_TOKENS) -> list[bytes]:
    """One key per whole block of `ids`, each hashing every token up to the end of its block."""
    keys: list[bytes] = []
    digest = b""
    tokens = np.asarray(ids, dtype=np.int64)
    for end in range(block_tokens, len(tokens) + 1, block_tokens):
        digest = hashlib.blake2b(digest + tokens[end - block_tokens : end].tobytes(), digest_size=16).digest()
        keys.append(digest)
    return keys


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class PrefixRouter:
    """Chooses a replica (by name) for a prompt; `start`/`finish` keep the per-replica load; replicas may
    come and go (`set_replicas`): only the conversations of a replica that left move elsewhere."""

    def __init__(
        self,
        replicas: Sequence[str],
        block_tokens: int = BLOCK_TOKENS,
        load_factor: float = LOAD_FACTOR,
        virtual_nodes: int = VIRTUAL_NODES,
        max_remembered: int = MAX_REMEMBERED,
    ) -> None:
        if load_factor < 1:
            raise ValueError(f"load_factor must be >= 1, got {load_factor}")
        self.block_tokens, self.load_factor = block_tokens, load_factor
        self.virtual_nodes, self.max_remembered = virtual_nodes, max_remembered
        self._served: OrderedDict[bytes, str] = OrderedDict()  # block key -> replica, least recent first
        self.load: dict[str, int] = {}
        self.decisions = {"prefix": 0, "hash": 0, "overflow": 0}  # how choices were made
        self.set_replicas(replicas)

    def set_replicas(self, replicas: Sequence[str]) -> None:
        """The replicas to route to now (a ring point set per replica; loads of those kept stay)."""
        if not replicas:
            raise ValueError("a router needs at least one replica")
        self.replicas = sorted(set(replicas))
        self.load = {r: self.load.get(r, 0) for r in self.replicas}
        ring = sorted(
            (_point(f"{r}:{v}".encode()), r) for r in self.replicas for v in range(self.virtual_nodes)
        )
        self._ring_points = [p for p, _ in ring]
        self._ring_owners = [r for _, r in ring]

    def bound(self) -> int:
        """The most requests one replica may have in flight, counting the one being placed."""
        return math.ceil(self.load_factor * (sum(self.load.values()) + 1) / len(self.replicas))

    def _ring_order(self, key: bytes) -> list[str]:
        """Replicas in ring order starting at `key`'s point, each once."""
        start = bisect.bisect(self._ring_points, _point(key)) % len(self._ring_points)
        order: list[str] = []
        for owner in itertools.chain(self._ring_owners[start:], self._ring_owners[:start]):
            if owner not in order:
                order.append(owner)
                if len(order) == len(self.replicas):
                    break
        return order

    def choose(self, ids: Sequence[int], fallback_key: bytes = b"") -> str:
        """The replica for a prompt of token `ids` (`fallback_key` hashes a prompt shorter than a block)."""
        keys = block_keys(ids, self.block_tokens)
        preferred: str | None = None
        for matched in range(len(keys), 0, -1):  # the longest beginning a replica served ...
            if keys[matched - 1] in self._served:
                # ... if it is at least half the prompt (a conversation's earlier turns, not only a
                # system prompt that every replica holds by now), and that replica is still here
                owner = self._served[keys[matched - 1]]
                if 2 * matched >= len(keys) and owner in self.load:
                    preferred = owner
                break
        ring_key = keys[-1] if keys else fallback_key  # the whole prompt: its first user message too
        order = self._ring_order(ring_key)
        if preferred is not None:
            order.remove(preferred)
            order.insert(0, preferred)
        bound = self.bound()
        chosen = next((r for r in order if self.load[r] < bound), order[0])
        self.decisions["prefix" if chosen == preferred else "hash" if chosen == order[0] else "overflow"] += 1
        for key in keys:  # this replica will hold these blocks now
            self._served[key] = chosen
            self._served.move_to_end(key)
        while len(self._served) > self.max_remembered:
            self._served.popitem(last=False)
        return chosen

    def start(self, replica: str) -> None:
        self.load[replica] = self.load.get(replica, 0) + 1

    def finish(self, replica: str) -> None:
        if replica in self.load:
            self.load[replica] -= 1


class _Replicas:
    """One `TritonGenerator` per replica address, with the generator's readiness and close."""

    def __init__(self, urls: Sequence[str], model_name: str, check_timeout_s: float) -> None:
        self.model_name, self.check_timeout_s = model_name, check_timeout_s
        self.replicas: dict[str, TritonGenerator] = {
            url: TritonGenerator(url, model_name, check_timeout_s) for url in urls
        }
        self.served: dict[str, int] = dict.fromkeys(urls, 0)  # final answers per replica

    async def not_ready_reason(self) -> str | None:
        """None when at least one replica is ready (requests go around the others)."""
        if not self.replicas:
            return "no Triton replica is running"
        reasons = [await replica.not_ready_reason() for replica in list(self.replicas.values())]
        if any(reason is None for reason in reasons):
            return None
        return "; ".join(r for r in reasons if r)

    async def close(self) -> None:
        for replica in list(self.replicas.values()):
            await replica.close()

    async def _run(
        self, order: Sequence[str], params: GenerationParams, request_id: str, timeout_s: float
    ) -> AsyncGenerator[Delta, None]:
        """Generate on the first replica of `order` that takes the request; a replica that is down (503
        before any answer) passes it to the next one."""
        last = TritonError(503, "no Triton replica is running", "unavailable")
        for url in order:
            replica = self.replicas.get(url)
            if replica is None:
                continue
            answered = False
            stream = replica.generate(params, request_id, timeout_s)
            try:
                async for delta in stream:
                    answered = True
                    if delta.final:
                        self.served[url] = self.served.get(url, 0) + 1
                    yield delta
                return
            except TritonError as exc:
                if answered or exc.status != 503:
                    raise
                last = exc
            finally:
                await stream.aclose()
        raise last


class RoutedTriton(_Replicas):
    """Several Triton replicas behind the prefix-aware router; the interface of `TritonGenerator`."""

    def __init__(self, urls: Sequence[str], model_name: str, check_timeout_s: float = 2.0) -> None:
        super().__init__(urls, model_name, check_timeout_s)
        self.router = PrefixRouter(list(urls) or ["-"])

    async def generate(
        self, params: GenerationParams, request_id: str, timeout_s: float
    ) -> AsyncGenerator[Delta, None]:
        first = self.router.choose(params.prompt_ids or (), params.prompt.encode("utf-8")[:256])
        order = [first, *(u for u in self.replicas if u != first)]
        self.router.start(first)
        try:
            async for delta in self._run(order, params, request_id, timeout_s):
                yield delta
        finally:
            self.router.finish(first)


class RoundRobinTriton(_Replicas):
    """The baseline: replicas in turn, whatever the prompt."""

    def __init__(self, urls: Sequence[str], model_name: str, check_timeout_s: float = 2.0) -> None:
        super().__init__(urls, model_name, check_timeout_s)
        self._next = itertools.cycle(list(urls))

    async def generate(
        self, params: GenerationParams, request_id: str, timeout_s: float
    ) -> AsyncGenerator[Delta, None]:
        first = next(self._next)
        order = [first, *(u for u in self.replicas if u != first)]
        async for delta in self._run(order, params, request_id, timeout_s):
            yield delta
