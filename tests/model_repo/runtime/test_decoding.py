"""Decoding features of the engine (issue 15) through the scheduler on the tiny model: penalties, bias,
seeds, logprobs and n choices act per sequence inside one continuous batch, and what the responses
report equals what a direct computation on the engine's own logits gives."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from model_repo.runtime.engine import Engine
from model_repo.runtime.logits import log_softmax
from model_repo.runtime.scheduler import ContinuousBatchScheduler, GenerationRequest, Job, Response
from tests.model_repo.runtime.recorder import Recorder as SharedRecorder

PROMPT = "the quick brown fox"
OTHER = "model servers stream"


class Recorder(SharedRecorder):
    """A job's responses and errors, read per sequence."""

    def ids(self, index: int = 0) -> list[int]:
        """Sequence `index`'s token ids over all its responses."""
        return [t for r in self.responses if r.sequence_index == index for t in r.token_ids]


def run(engine: Any, requests: list[GenerationRequest], max_active: int = 4) -> tuple[list[Recorder], Any]:
    """Submit every request at once to a one-lane scheduler (so they batch) and wait for all answers."""
    scheduler = ContinuousBatchScheduler(engine, max_active=max_active)
    records = [Recorder() for _ in requests]
    for i, (request, record) in enumerate(zip(requests, records, strict=True)):
        scheduler.submit(Job(f"r{i}", request, record.emit, record.fail))
    scheduler.start()  # started after submitting: the first admission pass takes them all
    try:
        assert all(r.done.wait(120) for r in records)
    finally:
        scheduler.stop()
    return records, scheduler


def teacher_logits(engine: Engine, prompt: str, generated: list[int]) -> np.ndarray:
    """The engine's logits before each generated token, computed the way generation runs (prefill of
    the prompt, then one decode step per token)."""
    ids = engine.encode(prompt)
    return engine.decode_logits(ids + generated + [0], len(ids))[: len(generated)]


def test_penalties_and_bias_apply_per_sequence_inside_one_batch(tiny_engine: Engine) -> None:
    """Two requests with different settings decode together (batch of 2) and each one's tokens are the
    argmax of the engine's logits processed by exactly its own settings."""
    biased_token = tiny_engine.encode("q")[0]
    penalised = GenerationRequest(
        prompt=PROMPT,
        max_tokens=12,
        end_id=-1,
        frequency_penalty=1.5,
        presence_penalty=0.5,
        repetition_penalty=1.3,
    )
    biased = GenerationRequest(prompt=OTHER, max_tokens=6, end_id=-1, logit_bias=((biased_token, 100.0),))
    (pen, bias), scheduler = run(tiny_engine, [penalised, biased])
    assert scheduler.max_batch_seen == 2
    assert bias.ids() == [biased_token] * 6
    generated = pen.ids()
    assert len(generated) == 12
    logits = teacher_logits(tiny_engine, PROMPT, generated)
    prompt_ids = tiny_engine.encode(PROMPT)
    for step, row in enumerate(logits):
        row = row.astype(np.float64)
        before = generated[:step]
        seen = set(prompt_ids) | set(before)
        for token in seen:
            row[token] = row[token] / 1.3 if row[token] > 0 else row[token] * 1.3
        for token in set(before):
            row[token] -= 1.5 * before.count(token) + 0.5
        assert int(np.argmax(row)) == generated[step], f"step {step}"
    plain, _ = run(tiny_engine, [GenerationRequest(prompt=PROMPT, max_tokens=12, end_id=-1)])
    assert plain[0].ids() != generated  # the penalties changed the answer


def test_the_same_seed_gives_the_same_text_alone_and_batched(tiny_engine: Engine) -> None:
    seeded = GenerationRequest(
        prompt=PROMPT, max_tokens=16, end_id=-1, temperature=1.0, top_p=0.95, seed=1234
    )
    (alone,), _ = run(tiny_engine, [seeded])
    other = GenerationRequest(prompt=OTHER, max_tokens=20, end_id=-1, temperature=1.0, seed=5)
    (batched, _other), scheduler = run(tiny_engine, [seeded, other])
    assert scheduler.max_batch_seen == 2
    assert batched.ids() == alone.ids() and batched.responses[-1].text == alone.responses[-1].text
    (reseeded,), _ = run(tiny_engine, [GenerationRequest(**{**seeded.__dict__, "seed": 99})])
    assert reseeded.ids() != alone.ids()


def test_logprobs_are_the_log_softmax_of_the_processed_logits(tiny_engine: Engine) -> None:
    """output logprobs and top alternatives equal a direct log-softmax of the engine's logits for the same
    prefix, with logit_bias applied (and no temperature: the request samples at 0.7)."""
    bias_token = tiny_engine.encode("e")[0]
    request = GenerationRequest(
        prompt=PROMPT,
        max_tokens=8,
        end_id=-1,
        temperature=0.7,
        seed=3,
        logprobs=True,
        top_logprobs=3,
        logit_bias=((bias_token, 2.0),),
    )
    (record,), _ = run(tiny_engine, [request])
    generated = record.ids()
    lps = [v for r in record.responses for v in r.log_probs]
    top_ids = [v for r in record.responses for v in r.top_token_ids]
    top_lps = [v for r in record.responses for v in r.top_log_probs]
    assert len(lps) == len(generated) == 8 and len(top_ids) == len(top_lps) == 24
    for step, row in enumerate(teacher_logits(tiny_engine, PROMPT, generated)):
        row = row.astype(np.float64)
        row[bias_token] += 2.0
        expected = log_softmax(row)
        assert lps[step] == pytest.approx(expected[generated[step]], abs=1e-4)
        best = list(np.argsort(-expected)[:3])
        assert top_ids[3 * step : 3 * step + 3] == best
        assert np.allclose(top_lps[3 * step : 3 * step + 3], expected[best], atol=1e-4)


def test_without_logprobs_nothing_is_computed_or_sent(tiny_engine: Engine) -> None:
    (record,), _ = run(tiny_engine, [GenerationRequest(prompt=PROMPT, max_tokens=4, end_id=-1)])
    assert all(r.log_probs == () and r.top_token_ids == () for r in record.responses)


def test_echo_returns_the_prompt_logprobs_once(tiny_engine: Engine) -> None:
    request = GenerationRequest(prompt=PROMPT, max_tokens=4, end_id=-1, stream=True, echo_logprobs=True)
    (record,), _ = run(tiny_engine, [request])
    first, rest = record.responses[0], record.responses[1:]
    ids = tiny_engine.encode(PROMPT)
    assert list(first.prompt_token_ids) == ids and all(r.prompt_token_ids == () for r in rest)
    assert np.isnan(first.prompt_log_probs[0])
    logits = tiny_engine.prompt_logits(ids)
    expected = [log_softmax(logits[i - 1])[ids[i]] for i in range(1, len(ids))]
    assert np.allclose(first.prompt_log_probs[1:], expected, atol=1e-4)


def test_n_sequences_share_one_prefill(tiny_engine: Engine) -> None:
    """n=3 greedy: one prefill, three identical sequences, each with its own index and finish reason;
    only the request's last response is final."""
    before = tiny_engine.prefills
    (record,), scheduler = run(tiny_engine, [GenerationRequest(prompt=PROMPT, max_tokens=6, end_id=-1, n=3)])
    assert tiny_engine.prefills - before == 1 and scheduler.max_batch_seen == 3
    assert sorted(r.sequence_index for r in record.responses) == [0, 1, 2]
    assert record.ids(0) == record.ids(1) == record.ids(2) and len(record.ids(0)) == 6
    assert [r.final for r in record.responses] == [False, False, True]
    assert all(r.finish_reason == "length" for r in record.responses)


def test_sampled_sequences_of_n_use_seed_plus_index(tiny_engine: Engine) -> None:
    base = {"prompt": PROMPT, "max_tokens": 10, "end_id": -1, "temperature": 1.0}
    (group,), _ = run(tiny_engine, [GenerationRequest(**base, seed=40, n=2)])  # type: ignore[arg-type]
    singles, _ = run(tiny_engine, [GenerationRequest(**base, seed=s) for s in (40, 41)])  # type: ignore[arg-type]
    assert group.ids(0) == singles[0].ids() and group.ids(1) == singles[1].ids()
    assert group.ids(0) != group.ids(1)


def test_a_stop_string_spanning_tokens_ends_the_text_before_it(tiny_engine: Engine) -> None:
    ids = tiny_engine.encode(PROMPT)
    free = tiny_engine.greedy_ids(ids, 12)
    pieces = [tiny_engine.decode([t]) for t in free]
    # a stop string made of the end of token 3 and the start of token 4 (spans the boundary)
    stop = pieces[3][-1:] + pieces[4][:1]
    full = tiny_engine.decode(free)
    expected = full[: full.find(stop)]
    for stream in (False, True):
        request = GenerationRequest(prompt=PROMPT, max_tokens=12, end_id=-1, stop=(stop,), stream=stream)
        (record,), _ = run(tiny_engine, [request])
        assert "".join(r.text for r in record.responses) == expected
        assert record.responses[-1].finish_reason == "stop"


def test_a_cancelled_request_of_n_sequences_leaves_the_batch_whole(tiny_engine: Engine) -> None:
    """Cancelling a request removes every one of its sequences; the scheduler counts one cancellation."""
    scheduler = ContinuousBatchScheduler(tiny_engine, max_active=4)
    record, gone = Recorder(), threading.Event()
    request = GenerationRequest(prompt=PROMPT, max_tokens=2000, end_id=-1, stream=True, n=3)

    def emit(response: Response) -> None:
        record.emit(response)
        gone.set()  # the client leaves after its first response

    scheduler.submit(Job("n3", request, emit, record.fail, is_cancelled=gone.is_set))
    scheduler.start()
    try:
        assert record.done.wait(60)
    finally:
        scheduler.stop()
    assert record.errors == ["request cancelled"] and scheduler.counts.cancelled_running == 1
    lane = scheduler.lanes[0]
    assert len(lane.batch) == 0 and lane.owners == {} and lane.jobs == {}
