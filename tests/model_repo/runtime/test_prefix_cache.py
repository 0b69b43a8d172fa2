"""The engine's prefix cache (model_repo/runtime/prefix_cache.py): many prefixes kept, least recently used
out within a byte budget, and the tokens generated are identical with and without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_repo.runtime.engine import PREFIX_MIN_TOKENS, Engine
from model_repo.runtime.prefix_cache import PrefixCache, cache_bytes_from_env
from model_repo.runtime.sampling import SamplingParams


def _kv(n: int, layers: int = 2) -> list[np.ndarray]:
    return [np.full((1, 2, n, 4), float(i), dtype=np.float32) for i in range(2 * layers)]


def test_the_longest_shared_beginning_wins_and_is_sliced_to_it() -> None:
    cache = PrefixCache(max_bytes=1 << 20, min_tokens=3)
    cache.store(list(range(10)), _kv(10))
    cache.store([*range(5), 50, 51, 52], _kv(8))
    reuse, kv = cache.lookup([*range(8), 99, 98], limit=8)
    assert reuse == 8 and kv[0].shape == (1, 2, 8, 4)
    reuse, _ = cache.lookup([*range(5), 50, 51, 7], limit=10)
    assert reuse == 7
    assert cache.lookup([7, 7, 7, 7], limit=4) == (0, [])
    assert (cache.stats.lookups, cache.stats.hits, cache.stats.reused_tokens) == (3, 2, 15)


def test_least_recently_used_entries_leave_first_within_the_byte_budget() -> None:
    one = sum(a.nbytes for a in _kv(10))
    cache = PrefixCache(max_bytes=2 * one, min_tokens=3)
    a, b, c = ([k * 100 + i for i in range(10)] for k in (1, 2, 3))
    cache.store(a, _kv(10))
    cache.store(b, _kv(10))
    assert cache.lookup(a, 10)[0] == 10  # a is now the most recently used
    cache.store(c, _kv(10))  # over budget: b (least recently used) leaves
    assert len(cache) == 2 and cache.nbytes <= 2 * one and cache.stats.evicted == 1
    assert cache.lookup(b, 10)[0] == 0 and cache.lookup(a, 10)[0] == 10 and cache.lookup(c, 10)[0] == 10


def test_a_prompt_that_extends_a_kept_one_replaces_it() -> None:
    """A conversation's next turn starts with the whole previous prompt: one entry per conversation."""
    cache = PrefixCache(max_bytes=1 << 20, min_tokens=3)
    cache.store(list(range(6)), _kv(6))
    cache.store(list(range(9)), _kv(9))
    assert len(cache) == 1 and cache.stats.subsumed == 1
    cache.store(list(range(4)), _kv(4))  # covered by the longer entry: nothing new kept
    assert len(cache) == 1 and cache.stats.stored == 2


def test_the_budget_comes_from_the_environment_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITONFORM_PREFIX_CACHE_MB", "1.5")
    assert cache_bytes_from_env() == int(1.5 * 1024 * 1024)
    monkeypatch.setenv("TRITONFORM_PREFIX_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="TRITONFORM_PREFIX_CACHE_MB='lots' is not a number"):
        cache_bytes_from_env()


def _conversations(engine: Engine, turns: int, seed: int | None) -> list[list[list[int]]]:
    """Two multi-turn chats in token ids, their turns interleaved: each turn's prompt is that chat's
    previous prompt, its answer and a new user message. Returns every chat's answers."""
    system = engine.encode("you are a helpful assistant who answers briefly and well. ")
    prompts = [[*system, *engine.encode(f"i am user {who}.")] for who in ("ann", "bob")]
    answers: list[list[list[int]]] = [[], []]
    for turn in range(turns):
        for chat, prompt in enumerate(prompts):
            prompt += engine.encode(f" question {turn}: tell me about the number {turn * 7 + chat}.")
            params = SamplingParams(
                max_tokens=6, temperature=0.0 if seed is None else 0.8, seed=seed, ignore_eos=True
            )
            answer = [t.token_id for t in engine.generate(prompt, params)]
            answers[chat].append(answer)
            prompt += answer
    return answers


@pytest.mark.parametrize("seed", [None, 1234], ids=["greedy", "sampled"])
def test_multi_turn_chats_generate_identical_tokens_with_and_without_the_cache(
    tiny_llama_export: Path, monkeypatch: pytest.MonkeyPatch, seed: int | None
) -> None:
    """Two conversations interleaved (each turn extends its own earlier prompt; a one-prompt cache would
    lose the other's): the cached engine skips most prefill tokens and generates exactly what an engine
    without a cache does."""
    cached = Engine.load(tiny_llama_export, num_threads=1)
    monkeypatch.setenv("TRITONFORM_PREFIX_CACHE_MB", "0")
    uncached = Engine.load(tiny_llama_export, num_threads=1)
    assert uncached.prefix_cache.max_bytes == 0
    prefilled: list[int] = []
    forward = cached.forward

    def counting(input_ids: np.ndarray, *args: object, **kwargs: object) -> object:
        if input_ids.shape[1] > 1:
            prefilled.append(input_ids.shape[1])
        return forward(input_ids, *args, **kwargs)  # type: ignore[arg-type]

    cached.forward = counting  # type: ignore[method-assign]
    assert _conversations(cached, 4, seed) == _conversations(uncached, 4, seed)
    stats = cached.prefix_cache.stats
    assert (
        stats.hits >= 7 and len(cached.prefix_cache) >= 2 and stats.reused_tokens > sum(prefilled)
    )  # most prompt tokens came from the cache
    assert uncached.prefix_cache.stats.hits == 0


def test_sibling_engines_share_one_cache(tiny_llama_export: Path) -> None:
    """A prompt prefilled on one decode lane's session serves a later prompt on another lane."""
    engine = Engine.load(tiny_llama_export, num_threads=1)
    sibling = engine.sibling(1)
    assert sibling.prefix_cache is engine.prefix_cache
    ids = engine.encode("you are a helpful assistant who answers briefly and well. hello")
    assert len(ids) > PREFIX_MIN_TOKENS + 2
    engine.prefill(ids)
    logits, _ = sibling.prefill([*ids, *engine.encode(" there")])
    assert engine.prefix_cache.stats.hits == 1
    fresh, _ = Engine.load(tiny_llama_export, num_threads=1).prefill([*ids, *engine.encode(" there")])
    assert np.array_equal(logits, fresh)
