"""Prefix-aware routing (serving/gateway/routing.py): a conversation's turns return to the replica that
holds its prefix, new conversations spread by consistent hashing, and the load bound keeps one hot prefix
from overloading a replica. Then for real: two Triton processes behind the gateway (`--triton-replicas
2`), each conversation served by one of them, answers identical to a single Triton's."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest

from serving.gateway.routing import PrefixRouter, block_keys
from serving.local_stack import LocalStack, LocalStackConfig
from serving.triton_local import free_port


def _conversation(seed: int, turns: int) -> list[list[int]]:
    """Token-id prompts of one chat: each turn extends the previous prompt (answer + new message)."""
    rng = random.Random(seed)
    system = list(range(1000, 1040))  # a system prompt every conversation shares
    prompt = [*system, *(rng.randrange(50_000) for _ in range(12))]
    prompts = [list(prompt)]
    for _ in range(turns - 1):
        prompt += [rng.randrange(50_000) for _ in range(30)]
        prompts.append(list(prompt))
    return prompts


def test_block_keys_name_whole_beginnings() -> None:
    a, b = block_keys(list(range(40)), 16), block_keys([*range(16), 99, *range(17, 40)], 16)
    assert len(a) == 2 and a[0] == b[0] and a[1] != b[1]


def test_every_turn_of_a_conversation_returns_to_its_replica() -> None:
    router = PrefixRouter(["a", "b"])
    for seed in range(8):
        turns = _conversation(seed, 6)
        first = router.choose(turns[0])
        assert all(router.choose(prompt) == first for prompt in turns[1:])
    assert router.decisions["prefix"] >= 8 * 5


def test_new_conversations_spread_over_replicas_by_consistent_hashing() -> None:
    """Conversations that share only a system prompt (longer than a block) are not pulled to the replica
    that served it: the ring is keyed on the whole first prompt, and the load bound caps each replica."""
    router = PrefixRouter(["a", "b"])
    chosen = []
    for seed in range(8):
        replica = router.choose(_conversation(seed, 1)[0])
        router.start(replica)  # all eight run at once
        chosen.append(replica)
    assert max(router.load.values()) <= router.bound()
    assert set(chosen) == {"a", "b"}


def test_one_hot_prefix_cannot_overload_a_replica() -> None:
    router = PrefixRouter(["a", "b", "c"], load_factor=1.25)
    hot = _conversation(0, 1)[0]
    for _ in range(30):
        router.start(router.choose(hot))
        assert max(router.load.values()) <= router.bound()
    assert min(router.load.values()) > 0 and router.decisions["overflow"] > 0


def test_the_choice_is_the_same_for_every_router_and_bad_settings_are_refused() -> None:
    prompt = _conversation(3, 1)[0]
    names = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
    assert PrefixRouter(names).choose(prompt) == PrefixRouter(list(reversed(names))).choose(prompt)
    with pytest.raises(ValueError, match="load_factor must be >= 1"):
        PrefixRouter(names, load_factor=0.5)


def test_a_replica_that_leaves_moves_only_its_own_conversations() -> None:
    """Consistent hashing: when one of three replicas goes, conversations on the other two stay put."""
    names = ["a", "b", "c"]
    router = PrefixRouter(names)
    placed = {seed: router.choose(_conversation(seed, 2)[1]) for seed in range(30)}
    router.set_replicas(["a", "b"])
    again = {seed: router.choose(_conversation(seed, 2)[1]) for seed in range(30)}
    assert all(again[s] == placed[s] for s in placed if placed[s] != "c")
    assert "c" not in again.values()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_local_tritons_serve_each_conversation_from_one_replica(tiny_repository: Path) -> None:
    """`tritonform serve --triton-replicas 2`: two real Triton processes; three two-turn chats; each
    chat's second turn goes to the replica of its first, and the answers equal a one-Triton stack's."""
    chats = [f"user {n} says hello and asks about number {n}" for n in range(3)]

    def run(replicas: int) -> tuple[list[str], list[int]]:
        config = LocalStackConfig(
            tiny_repository, port=free_port(), api_key="tf-test", triton_replicas=replicas
        )
        answers: list[str] = []
        with (
            LocalStack(config) as stack,
            httpx.Client(
                base_url=stack.url, headers={"Authorization": "Bearer tf-test"}, timeout=120
            ) as client,
        ):
            for chat in chats:
                messages = [{"role": "user", "content": chat}]
                for _turn in range(2):
                    body = {"model": "llm", "messages": messages, "max_tokens": 8, "temperature": 0}
                    answer = client.post("/v1/chat/completions", json=body)
                    assert answer.status_code == 200, answer.text
                    text = answer.json()["choices"][0]["message"]["content"]
                    answers.append(text)
                    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "more"}]
            assert stack._gateway is not None and stack._gateway.triton is not None
            backend = stack._gateway.triton
            decisions = dict(backend.router.decisions) if replicas > 1 else {}
            served = list(getattr(backend, "served", {"one": len(answers)}).values())
        if replicas > 1:
            assert decisions["prefix"] >= len(chats), decisions  # every second turn followed its prefix
        return answers, served

    routed, served = run(2)
    assert len(served) == 2 and sum(served) == 2 * len(chats)
    single, _ = run(1)
    assert routed == single
