"""The runtime's scheduler (model_repo/runtime/scheduler.py) run in-process on the tiny model: lanes
answer exactly like one batch, share the work evenly, and a lone stream uses every core.
(The same code served by a real Triton is tested in tests/model_repo/test_triton_serving.py.)"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from model_repo.runtime.engine import Engine
from model_repo.runtime.request import SequenceOutput
from model_repo.runtime.sampling import SamplingParams
from model_repo.runtime.scheduler import (
    ContinuousBatchScheduler,
    GenerationRequest,
    Job,
    Response,
    lane_count,
)
from tests.model_repo.runtime.recorder import Recorder

PROMPTS = ["hello world", "the quick brown fox", "a", "model servers stream", "one two three", "lazy dog"]


class Counting:
    """An engine whose model calls are counted (everything else is the wrapped engine's)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def prefill(self, ids: Any) -> Any:
        self.calls += 1
        return self._engine.prefill(ids)

    def forward_in_place(self, *args: Any) -> Any:
        self.calls += 1
        return self._engine.forward_in_place(*args)


def run_jobs(scheduler: ContinuousBatchScheduler, prompts: list[str], max_tokens: int) -> list[str]:
    """Submit every prompt at once (non-streaming, exactly max_tokens) and wait for all answers."""
    texts: list[list[str]] = [[] for _ in prompts]
    done = [threading.Event() for _ in prompts]
    errors: list[str] = []
    for i, prompt in enumerate(prompts):

        def emit(response: Response, i: int = i) -> None:
            texts[i].append(response.text)
            if response.final:
                done[i].set()

        def fail(message: str, i: int = i) -> None:
            errors.append(message)
            done[i].set()

        request = GenerationRequest(prompt=prompt, max_tokens=max_tokens, end_id=-1)
        scheduler.submit(Job(f"r{i}", request, emit, fail))
    assert all(event.wait(60) for event in done)
    assert errors == []
    return ["".join(t) for t in texts]


@pytest.fixture
def lanes(tiny_engine: Engine) -> Any:
    shared = Counting(tiny_engine)
    own = [Counting(tiny_engine.sibling(1)), Counting(tiny_engine.sibling(1))]
    scheduler = ContinuousBatchScheduler(shared, max_active=4, lane_engines=own)
    scheduler.start()
    yield SimpleNamespace(scheduler=scheduler, shared=shared, own=own)
    scheduler.stop()


def test_two_lanes_answer_like_the_engine_alone_and_share_the_work(lanes: Any, tiny_engine: Engine) -> None:
    expected = [tiny_engine.generate_text(p, SamplingParams(max_tokens=12, ignore_eos=True)) for p in PROMPTS]
    assert run_jobs(lanes.scheduler, PROMPTS, 12) == expected
    # both lanes decoded, each at most its share of max_active (4 over 2 lanes) per step
    assert [lane.capacity for lane in lanes.scheduler.lanes] == [2, 2]
    assert all(lane.steps > 0 for lane in lanes.scheduler.lanes)
    assert all(engine.calls > 0 for engine in lanes.own)
    assert lanes.scheduler.max_batch_seen == 2
    assert lanes.scheduler.jobs == {}


def test_a_lane_working_alone_runs_on_the_all_cores_engine(lanes: Any, tiny_engine: Engine) -> None:
    expected = tiny_engine.generate_text(PROMPTS[1], SamplingParams(max_tokens=10, ignore_eos=True))
    assert run_jobs(lanes.scheduler, [PROMPTS[1]], 10) == [expected]
    assert lanes.shared.calls == 10  # one prefill and nine decode steps
    assert [engine.calls for engine in lanes.own] == [0, 0]


class Overlaps:
    """Model calls under way on a set of engines, and how often a call on the all-cores engine ran
    beside another call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: list[bool] = []  # one entry per call under way: whether it is the all-cores one
        self.beside_shared = 0


class Tracked(Counting):
    """A counted engine whose calls register in `Overlaps`; the all-cores one (`gate` given) holds
    its first call until `gate` is set."""

    def __init__(self, engine: Engine, overlaps: Overlaps, gate: threading.Event | None = None) -> None:
        super().__init__(engine)
        self._overlaps, self._gate = overlaps, gate

    def _call(self, name: str, *args: Any) -> Any:
        shared, state = self._gate is not None, self._overlaps
        with state.lock:
            state.running.append(shared)
            if len(state.running) > 1 and any(state.running):
                state.beside_shared += 1
        try:
            if shared and self.calls == 0:
                assert self._gate is not None and self._gate.wait(60)
            return getattr(Counting, name)(self, *args)
        finally:
            with state.lock:
                state.running.remove(shared)

    def prefill(self, ids: Any) -> Any:
        return self._call("prefill", ids)

    def forward_in_place(self, *args: Any) -> Any:
        return self._call("forward_in_place", *args)


def test_a_lane_never_runs_beside_a_run_on_all_the_cores(tiny_engine: Engine) -> None:
    """The all-cores session's threads may spin inside a run (spec.GenerationSpec.spin_only_in_runs):
    a lane that gets work while such a run is under way waits for it to end instead of sharing its
    cores, and from then on both lanes run on their own sessions."""
    overlaps, gate = Overlaps(), threading.Event()
    shared = Tracked(tiny_engine, overlaps, gate)
    own = [Tracked(tiny_engine.sibling(1), overlaps), Tracked(tiny_engine.sibling(1), overlaps)]
    scheduler = ContinuousBatchScheduler(shared, max_active=4, lane_engines=own)
    scheduler.start()
    records = [Recorder(), Recorder()]
    try:
        request = GenerationRequest(prompt=PROMPTS[0], max_tokens=8, end_id=-1)
        scheduler.submit(_job("first", request, records[0]))  # alone: its prefill holds the all cores
        for _ in range(6000):  # until the first prefill has started (and is held)
            if overlaps.running:
                break
            threading.Event().wait(0.01)
        request = GenerationRequest(prompt=PROMPTS[1], max_tokens=8, end_id=-1)
        scheduler.submit(_job("second", request, records[1]))
        for _ in range(6000):  # the other lane admits it and waits for the all-cores run
            if scheduler.waits_for_shared:
                break
            threading.Event().wait(0.01)
        assert scheduler.waits_for_shared == 1
        assert [engine.calls for engine in own] == [0, 0]  # nothing ran beside the held prefill
        gate.set()
        assert all(record.done.wait(60) for record in records)
    finally:
        gate.set()
        scheduler.stop()
    expected = [
        tiny_engine.generate_text(p, SamplingParams(max_tokens=8, ignore_eos=True)) for p in PROMPTS[:2]
    ]
    assert ["".join(r.text for r in record.responses) for record in records] == expected
    assert overlaps.beside_shared == 0
    assert shared.calls >= 1  # the first prefill (and the last lane's steps once it ran alone)
    assert all(engine.calls > 0 for engine in own)


def test_a_lane_takes_a_job_only_with_room_and_no_more_sequences_than_the_others(tiny_engine: Engine) -> None:
    """Lanes count running sequences (a job of n choices runs n), not jobs."""
    scheduler = ContinuousBatchScheduler(
        tiny_engine, max_active=5, lane_engines=[tiny_engine, tiny_engine]
    )  # not started: the lanes' sequence tables are filled by hand
    first, second = scheduler.lanes
    assert (first.capacity, second.capacity) == (3, 2)
    job = Job("x", GenerationRequest(prompt="p", max_tokens=1), lambda *_: None, lambda _m: None)
    seq = SequenceOutput(0, tiny_engine.tokenizer, job.request)
    assert scheduler.may_take(first) and scheduler.may_take(second)
    first.owners["a"] = (job, seq)
    assert not scheduler.may_take(first) and scheduler.may_take(second)
    second.owners["b"] = second.owners["c"] = (job, seq)  # e.g. one job of two sequences
    assert scheduler.may_take(first) and not scheduler.may_take(second)  # second is full
    first.owners["d"] = first.owners["e"] = (job, seq)
    assert not scheduler.may_take(first)  # full too
    assert (first.load, second.load) == (3, 2)


def test_without_lane_engines_there_is_one_lane_on_the_engine(tiny_engine: Engine) -> None:
    scheduler = ContinuousBatchScheduler(tiny_engine, max_active=3)
    scheduler.start()
    try:
        assert len(scheduler.lanes) == 1 and scheduler.lanes[0].engine is tiny_engine
        texts = run_jobs(scheduler, PROMPTS[:3], 6)
        assert texts == [
            tiny_engine.generate_text(p, SamplingParams(max_tokens=6, ignore_eos=True)) for p in PROMPTS[:3]
        ]
        assert scheduler.max_batch_seen >= 2
    finally:
        scheduler.stop()


def _engine(providers: list[str], threads: int) -> Any:
    return SimpleNamespace(providers=providers, num_threads=threads)


def test_lane_count_is_two_on_multi_core_cpu_and_one_elsewhere() -> None:
    cpu = ["CPUExecutionProvider"]
    assert lane_count(0, _engine(cpu, 2), 8) == 2
    assert lane_count(0, _engine(cpu, 16), 8) == 2
    assert lane_count(0, _engine(cpu, 1), 8) == 1
    assert lane_count(0, _engine(["CUDAExecutionProvider", *cpu], 8), 8) == 1
    assert lane_count(0, _engine(cpu, 2), 1) == 1  # never more lanes than sequences
    assert lane_count(3, _engine(cpu, 2), 8) == 3  # asked for explicitly
    with pytest.raises(ValueError, match="decode_lanes=-1"):
        lane_count(-1, _engine(cpu, 2), 8)


def test_a_client_whose_responses_fail_does_not_hold_up_the_others(tiny_engine: Engine) -> None:
    """Responses leave through a writer thread per lane; one that raises (a client gone away) is
    logged and the next ones still go out."""
    scheduler = ContinuousBatchScheduler(tiny_engine, max_active=4)
    scheduler.start()
    broken = threading.Event()
    try:

        def explode(*_args: Any) -> None:
            broken.set()
            raise RuntimeError("client went away")

        request = GenerationRequest(prompt=PROMPTS[0], max_tokens=4, stream=True, end_id=-1)
        scheduler.submit(Job("gone", request, explode, lambda _m: None))
        expected = tiny_engine.generate_text(PROMPTS[1], SamplingParams(max_tokens=6, ignore_eos=True))
        assert run_jobs(scheduler, [PROMPTS[1]], 6) == [expected]
        assert broken.is_set()
    finally:
        scheduler.stop()


def test_stop_sends_what_was_queued_then_fails_the_running_job_last(tiny_engine: Engine) -> None:
    scheduler = ContinuousBatchScheduler(tiny_engine, max_active=2)
    scheduler.start()
    events: list[tuple[str, Any]] = []
    started = threading.Event()

    def emit(response: Response) -> None:
        events.append(("text", response.final))
        started.set()

    request = GenerationRequest(prompt=PROMPTS[0], max_tokens=500, stream=True, end_id=-1)
    scheduler.submit(Job("long", request, emit, lambda message: events.append(("error", message))))
    assert started.wait(30)
    scheduler.stop()
    seen = list(events)
    assert seen[-1] == ("error", "the model is shutting down")
    assert all(kind == "text" and not final for kind, final in seen[:-1])
    assert events == seen  # nothing arrives after stop() returned


def test_with_lanes_gives_each_lane_its_own_session_with_a_share_of_the_threads(
    tiny_engine: Engine,
) -> None:
    assert tiny_engine.num_threads == 1
    alone = ContinuousBatchScheduler.with_lanes(tiny_engine, max_active=4)  # auto: 1 thread, 1 lane
    assert [lane.engine for lane in alone.lanes] == [tiny_engine]
    two = ContinuousBatchScheduler.with_lanes(tiny_engine, max_active=4, decode_lanes=2)
    assert len(two.lanes) == 2 and all(lane.engine is not tiny_engine for lane in two.lanes)
    assert [lane.engine.num_threads for lane in two.lanes] == [1, 1]
    assert two.lanes[0].engine.session is not two.lanes[1].engine.session


def _job(name: str, request: GenerationRequest, record: Recorder, **kwargs: Any) -> Job:
    return Job(name, request, record.emit, record.fail, **kwargs)


def test_a_job_whose_client_left_while_queued_is_never_prefilled(tiny_engine: Engine) -> None:
    engine = Counting(tiny_engine)
    scheduler = ContinuousBatchScheduler(engine, max_active=2)
    gone = Recorder()
    scheduler.submit(
        _job("gone", GenerationRequest(prompt=PROMPTS[3], max_tokens=8), gone, is_cancelled=lambda: True)
    )
    scheduler.start()
    try:
        assert gone.done.wait(30)
    finally:
        scheduler.stop()
    assert gone.errors == ["request cancelled"] and gone.errors[0].kind == "CANCELLED"
    assert engine.calls == 0 and scheduler.counts.cancelled_before_prefill == 1


def test_the_queue_is_bounded_and_a_job_beyond_it_fails_at_once_as_unavailable(tiny_engine: Engine) -> None:
    scheduler = ContinuousBatchScheduler(tiny_engine, max_active=1, max_queued=2)  # not started: jobs wait
    records = [Recorder() for _ in range(3)]
    for i, record in enumerate(records):
        scheduler.submit(_job(f"q{i}", GenerationRequest(prompt="p", max_tokens=1), record))
    assert [r.errors for r in records[:2]] == [[], []]
    assert len(records[2].errors) == 1 and records[2].errors[0].kind == "UNAVAILABLE"
    assert "queue is full" in records[2].errors[0] and scheduler.counts.rejected_queue_full == 1
    assert scheduler.pending.qsize() == 2


def test_stop_answers_every_queued_job_and_nothing_is_left_open(tiny_engine: Engine) -> None:
    scheduler = ContinuousBatchScheduler(tiny_engine, max_active=1)
    scheduler.start()
    running, queued = Recorder(), [Recorder() for _ in range(3)]
    long_request = GenerationRequest(prompt=PROMPTS[0], max_tokens=2000, stream=True, end_id=-1)
    started = threading.Event()

    def emit(*args: Any) -> None:
        running.emit(*args)
        started.set()

    scheduler.submit(Job("long", long_request, emit, running.fail))
    assert started.wait(30)
    for i, record in enumerate(queued):  # the only lane is full: these wait in the queue
        scheduler.submit(_job(f"wait{i}", GenerationRequest(prompt="p", max_tokens=4), record))
    scheduler.stop()
    assert running.errors == ["the model is shutting down"]
    assert [r.errors for r in queued] == [["the model is shutting down"]] * 3
    assert all(r.errors[0].kind == "UNAVAILABLE" for r in queued)
    assert scheduler.counts.open == 0 and scheduler.counts.failed_on_stop == 4
    late = Recorder()  # a job arriving after stop is answered at once, too
    scheduler.submit(_job("late", GenerationRequest(prompt="p", max_tokens=4), late))
    assert late.errors == ["the model is shutting down"] and scheduler.counts.open == 0


def test_a_response_made_after_the_writer_stopped_is_still_sent(tiny_engine: Engine) -> None:
    scheduler = ContinuousBatchScheduler(tiny_engine, max_active=1)
    scheduler.start()
    scheduler.stop()
    record = Recorder()
    # a lane thread that outlived stop()'s join would answer like this
    scheduler.lanes[0].fail(_job("late", GenerationRequest(prompt="p", max_tokens=1), record), "late error")
    assert record.errors == ["late error"]


class FailingPrefill(Counting):
    """Prefill raises for one prompt (an allocation failure on a long prompt), works for the others."""

    def __init__(self, engine: Engine, poisoned: list[int]) -> None:
        super().__init__(engine)
        self.poisoned = poisoned

    def prefill(self, ids: Any) -> Any:
        if list(ids) == self.poisoned:
            raise MemoryError("cannot allocate 40 GB")
        return super().prefill(ids)


def test_a_prefill_that_raises_fails_only_its_own_job(tiny_engine: Engine) -> None:
    engine = FailingPrefill(tiny_engine, tiny_engine.encode(PROMPTS[3]))
    scheduler = ContinuousBatchScheduler(engine, max_active=2)
    good, bad = Recorder(), Recorder()
    # both are admitted in the same pass: the good one is in the batch when the bad prefill raises
    scheduler.submit(_job("good", GenerationRequest(prompt=PROMPTS[1], max_tokens=8, end_id=-1), good))
    scheduler.submit(_job("bad", GenerationRequest(prompt=PROMPTS[3], max_tokens=8), bad))
    scheduler.start()
    try:
        assert good.done.wait(30) and bad.done.wait(30)
    finally:
        scheduler.stop()
    assert len(bad.errors) == 1 and "cannot allocate" in bad.errors[0] and bad.errors[0].kind == "INTERNAL"
    expected = tiny_engine.generate_text(PROMPTS[1], SamplingParams(max_tokens=8, ignore_eos=True))
    assert good.errors == [] and good.responses[-1][0] == expected


def test_the_finish_reason_comes_from_the_model_and_the_end_token_is_not_counted(tiny_engine: Engine) -> None:
    ids = tiny_engine.encode(PROMPTS[1])
    free = tiny_engine.greedy_ids(ids, 6)
    end = free[3]
    first = free.index(end)
    scheduler = ContinuousBatchScheduler(tiny_engine, max_active=2)
    scheduler.start()
    try:
        jobs = {
            "ended": GenerationRequest(prompt=PROMPTS[1], max_tokens=first + 1, end_id=end),
            "length": GenerationRequest(prompt=PROMPTS[1], max_tokens=first + 1, end_id=-1),
            "ids": GenerationRequest(
                prompt="ignored", max_tokens=first + 1, end_id=-1, prompt_ids=tuple(ids)
            ),
        }
        records = {name: Recorder() for name in jobs}
        made = {name: _job(name, request, records[name]) for name, request in jobs.items()}
        for job in made.values():
            scheduler.submit(job)
        assert all(r.done.wait(30) for r in records.values())
    finally:
        scheduler.stop()
    # the end token falls on the last allowed token: still 'stop', and it is not a completion token
    assert made["ended"].finish_reason == "stop" and records["ended"].responses[-1][3] == first
    assert made["length"].finish_reason == "length" and records["length"].responses[-1][3] == first + 1
    # a prompt sent as token ids is generated from exactly those ids
    assert records["ids"].responses == records["length"].responses
