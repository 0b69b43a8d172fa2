"""The runtime's scheduler (model_repo/runtime/scheduler.py) run in-process on the tiny model: lanes
answer exactly like one batch, share the work evenly, and a lone stream uses every core.
(The same code served by a real Triton is tested in tests/model_repo/test_triton_serving.py.)"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from model_repo.runtime.engine import Engine
from model_repo.runtime.sampling import SamplingParams
from model_repo.runtime.scheduler import ContinuousBatchScheduler, GenerationRequest, Job, lane_count

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

        def emit(text: str, final: bool, _p: int, _c: int, i: int = i) -> None:
            texts[i].append(text)
            if final:
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


def test_a_lane_takes_a_job_only_with_room_and_no_more_jobs_than_the_others(tiny_engine: Engine) -> None:
    scheduler = ContinuousBatchScheduler(
        tiny_engine, max_active=5, lane_engines=[tiny_engine, tiny_engine]
    )  # not started: the lanes' job tables are filled by hand
    first, second = scheduler.lanes
    assert (first.capacity, second.capacity) == (3, 2)
    job = Job("x", GenerationRequest(prompt="p", max_tokens=1), lambda *_: None, lambda _m: None)
    assert scheduler.may_take(first) and scheduler.may_take(second)
    first.jobs["a"] = job
    assert not scheduler.may_take(first) and scheduler.may_take(second)
    second.jobs["b"] = second.jobs["c"] = job
    assert scheduler.may_take(first) and not scheduler.may_take(second)  # second is full
    first.jobs["d"] = first.jobs["e"] = job
    assert not scheduler.may_take(first)  # full too
    assert sorted(scheduler.jobs) == ["a", "b", "c", "d", "e"]


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

    def emit(text: str, final: bool, _p: int, _c: int) -> None:
        events.append(("text", final))
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
