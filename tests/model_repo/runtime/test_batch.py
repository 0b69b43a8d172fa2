"""Continuous batching: both cache layouts give each sequence exactly its tokens alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_repo.runtime.batch import LeftPaddedBatch, RightPaddedBatch
from model_repo.runtime.contract import EngineError
from model_repo.runtime.engine import Engine
from model_repo.runtime.sampling import SamplingParams


def _drain(batch: object, outs: dict[str, list[int]]) -> None:
    while len(batch):  # type: ignore[arg-type]
        for o in batch.step():  # type: ignore[attr-defined]
            outs[o.request_id].append(o.token_id)


@pytest.fixture(params=["llama-gqa-right-padded", "gpt2-plain-left-padded"])
def any_engine(request: pytest.FixtureRequest, tiny_gpt2_export: Path) -> Engine:
    """Both batch layouts: GroupQueryAttention (right-padded, in place) and plain attention (left)."""
    if request.param.startswith("llama"):
        engine: Engine = request.getfixturevalue("tiny_engine")
        assert isinstance(engine.new_batch(), RightPaddedBatch)
    else:
        engine = Engine.load(tiny_gpt2_export, num_threads=1)
        assert isinstance(engine.new_batch(), LeftPaddedBatch)
    return engine


def test_batched_step_equals_each_sequence_alone(any_engine: Engine) -> None:
    """Sequences with different prompt lengths that join at different times give exactly the tokens
    they give alone: padding, masks and per-sequence positions are right."""
    tiny_engine = any_engine
    prompts = [
        tiny_engine.encode(t)
        for t in ("hello world how are you", "the", "quick brown fox jumps over a lazy dog")
    ]
    alone = [tiny_engine.greedy_ids(p, 12) for p in prompts]
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    batch = tiny_engine.new_batch()
    outs: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    outs["a"].append(batch.add("a", prompts[0], params).token_id)
    for _ in range(3):
        for o in batch.step():
            outs[o.request_id].append(o.token_id)
    outs["b"].append(batch.add("b", prompts[1], params).token_id)
    outs["c"].append(batch.add("c", prompts[2], params).token_id)
    assert len(batch) == 3
    _drain(batch, outs)
    assert [outs["a"], outs["b"], outs["c"]] == alone


def test_a_batch_moves_between_sessions_of_the_same_model_without_changing_a_token(
    any_engine: Engine,
) -> None:
    """`Engine.sibling` opens another session (own threads, own prefix cache) over the same files; a
    batch's prefill and steps may run on either, since the KV cache is the batch's plain memory."""
    sibling = any_engine.sibling(1)
    assert sibling.session is not any_engine.session and sibling.tokenizer is any_engine.tokenizer
    assert sibling.num_threads == 1 and sibling.metadata == any_engine.metadata
    prompts = [any_engine.encode(t) for t in ("hello world how are you", "quick brown fox")]
    alone = [any_engine.greedy_ids(p, 10) for p in prompts]
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    batch = any_engine.new_batch()
    outs: dict[str, list[int]] = {"a": [], "b": []}
    outs["a"].append(batch.add("a", prompts[0], params, sibling).token_id)
    outs["b"].append(batch.add("b", prompts[1], params).token_id)
    turn = 0
    while len(batch):
        turn += 1
        for o in batch.step(sibling if turn % 2 else None):
            outs[o.request_id].append(o.token_id)
    assert [outs["a"], outs["b"]] == alone


def test_a_batch_binds_its_cache_once_and_again_only_when_the_cache_changes(tiny_engine: Engine) -> None:
    """Binding every cache tensor costs ~0.6 ms; steps over an unchanged cache reuse the binding, and a
    join, a leave or another session binds afresh (a stale binding would write into freed buffers)."""
    ids = [tiny_engine.encode(t) for t in ("hello world", "quick brown fox", "a lazy dog")]
    alone = [tiny_engine.greedy_ids(p, 8) for p in ids]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    batch = tiny_engine.new_batch()
    assert isinstance(batch, RightPaddedBatch)
    outs: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    outs["a"].append(batch.add("a", ids[0], params).token_id)
    outs["b"].append(batch.add("b", ids[1], params).token_id)
    seen = []
    for runner in (None, None, tiny_engine.sibling(1)):
        for o in batch.step(runner):
            outs[o.request_id].append(o.token_id)
        assert batch._bound is not None
        seen.append(batch._bound[2])
    assert seen[0] is seen[1] and seen[2] is not seen[1]
    outs["c"].append(batch.add("c", ids[2], params).token_id)
    for o in batch.step():
        outs[o.request_id].append(o.token_id)
    assert batch._bound is not None and batch._bound[2] is not seen[2]
    _drain(batch, outs)
    assert batch._bound is None  # the emptied batch holds no buffers through a binding
    assert [outs["a"], outs["b"], outs["c"]] == alone


def test_removing_a_sequence_mid_batch_keeps_the_others_exact(any_engine: Engine) -> None:
    tiny_engine = any_engine
    prompts = [tiny_engine.encode(t) for t in ("a lazy dog", "model servers stream tokens to clients")]
    alone = tiny_engine.greedy_ids(prompts[0], 10)
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    batch = tiny_engine.new_batch()
    outs: dict[str, list[int]] = {"keep": [], "drop": []}
    outs["keep"].append(batch.add("keep", prompts[0], params).token_id)
    outs["drop"].append(batch.add("drop", prompts[1], params).token_id)
    for o in batch.step():
        outs[o.request_id].append(o.token_id)
    assert batch.remove("drop") and not batch.remove("drop")
    assert batch.request_ids == ["keep"]
    _drain(batch, outs)
    assert outs["keep"] == alone


def test_bad_prompts_are_rejected(tiny_engine: Engine) -> None:
    batch = tiny_engine.new_batch()
    with pytest.raises(EngineError, match="empty"):
        batch.add("x", [], SamplingParams())
    with pytest.raises(EngineError, match="token ids"):
        batch.add("x", [tiny_engine.metadata.vocab_size], SamplingParams())


def test_a_decode_step_writes_the_new_keys_into_the_batch_cache_in_place(tiny_engine: Engine) -> None:
    batch = tiny_engine.new_batch()
    assert isinstance(batch, RightPaddedBatch)
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    batch.add("a", tiny_engine.encode("hello world"), params)
    batch.add("b", tiny_engine.encode("a somewhat longer prompt than the first"), params)
    lengths = [s.length for s in batch.seqs]
    arrays = list(batch.cache)
    assert all(not a[row, :, n:].any() for a in arrays for row, n in enumerate(lengths))
    batch.step()
    # the same arrays (no copy), each row's new key/value now in column length_b, nothing beyond it
    assert all(a is b for a, b in zip(batch.cache, arrays, strict=True))
    for a in arrays:
        for row, n in enumerate(lengths):
            assert a[row, :, n].any() and not a[row, :, n + 1 :].any()


def test_the_batch_cache_grows_past_its_capacity_and_stays_exact(
    tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RightPaddedBatch, "CAPACITY_STEP", 4)
    prompts = [tiny_engine.encode(t) for t in ("the cat", "a much longer prompt with many more words in it")]
    alone = [tiny_engine.greedy_ids(p, 20) for p in prompts]
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    batch = tiny_engine.new_batch()
    outs: dict[str, list[int]] = {"a": [batch.add("a", prompts[0], params).token_id]}
    first_capacity = batch.capacity  # type: ignore[attr-defined]
    outs["b"] = [batch.add("b", prompts[1], params).token_id]
    _drain(batch, outs)
    assert [outs["a"], outs["b"]] == alone
    assert first_capacity % 4 == 0 and first_capacity < len(prompts[1])


def test_the_batch_cache_shrinks_when_a_long_sequence_leaves(
    tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RightPaddedBatch, "CAPACITY_STEP", 4)
    short, long = tiny_engine.encode("hi there"), tiny_engine.encode("a long prompt " * 8)
    alone = tiny_engine.greedy_ids(short, 10)
    batch = tiny_engine.new_batch()
    assert isinstance(batch, RightPaddedBatch)
    outs = {"short": [batch.add("short", short, SamplingParams(max_tokens=10, ignore_eos=True)).token_id]}
    batch.add("long", long, SamplingParams(max_tokens=2, ignore_eos=True))
    assert batch.capacity > len(long)
    for o in batch.step():  # the long one ends here and leaves
        if o.request_id == "short":
            outs["short"].append(o.token_id)
    assert batch.request_ids == ["short"] and batch.capacity < len(long)
    _drain(batch, outs)
    assert outs["short"] == alone


class PoisonedRow:
    """A session whose decode logits are NaN in one row (a broken kernel, an overflow) for one step."""

    def __init__(self, engine: Engine, row: int) -> None:
        self._engine, self.row = engine, row

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def forward_in_place(self, *args: object) -> object:
        logits = self._engine.forward_in_place(*args)  # type: ignore[arg-type]
        logits[self.row] = float("nan")
        return logits


def test_nan_logits_end_only_their_own_sequence(tiny_engine: Engine) -> None:
    prompts = [tiny_engine.encode(t) for t in ("a lazy dog", "model servers stream tokens to clients")]
    alone = tiny_engine.greedy_ids(prompts[1], 6)
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    batch = tiny_engine.new_batch()
    outs: dict[str, list[int]] = {"bad": [], "good": []}
    outs["bad"].append(batch.add("bad", prompts[0], params).token_id)
    outs["good"].append(batch.add("good", prompts[1], params).token_id)
    step = batch.step(PoisonedRow(tiny_engine, row=0))  # type: ignore[arg-type]
    broken = [o for o in step if o.request_id == "bad"]
    assert len(broken) == 1 and broken[0].finish_reason == "error" and "non-finite" in str(broken[0].error)
    assert batch.request_ids == ["good"]
    outs["good"] += [o.token_id for o in step if o.request_id == "good"]
    _drain(batch, outs)
    assert outs["good"] == alone
