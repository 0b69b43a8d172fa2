"""Continuous batching of generation requests over one model, independent of Triton's types.

The Triton python-backend model (`model_repo/python_model/model.py`) parses each request into a
`GenerationRequest`, wraps it in a `Job` (how to answer, whether the client went away) and hands it to
`ContinuousBatchScheduler`. Each decode lane (two on a multi-core CPU, one on a GPU) is a thread that
admits new requests between decode steps (prefill joins its KV-cache batch) and advances all its
active sequences with ONE batched engine step; its writer thread sends the responses.
A request of n sequences shares one prefill (`DecodeBatch.add_group`); each sequence answers on its
own (`SequenceOutput` in request.py). Streaming sequences get a response per text delta and a last one
carrying the last delta; non-streaming sequences get exactly one response. Every `Response` carries
the prompt's tokens, the completion tokens behind it with their ids (and logprobs when asked), and a
sequence's last one its finish reason; the request's last response is `final`. A job whose client went away
(`Job.is_cancelled()`) is dropped from the batch at the next check, and never prefilled if it went
away while queued. Every job ends with a final response or exactly one `fail` (a `JobError`), also
when the queue is full (`max_queued`) and on `stop()`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .contract import EngineError
from .logits import log_softmax
from .request import GenerationRequest, Job, JobError, Response, SequenceOutput

__all__ = [
    "ContinuousBatchScheduler",
    "GenerationRequest",
    "Job",
    "JobError",
    "Lane",
    "Response",
    "SchedulerCounts",
    "lane_count",
]

CANCEL_CHECK_INTERVAL_S = 0.2
SHUTTING_DOWN = "the model is shutting down"


@dataclass
class SchedulerCounts:
    """What the scheduler did with the jobs it was given (for tests, logs and metrics)."""

    submitted: int = 0
    finished: int = 0  # ended with a final response
    failed: int = 0  # ended with an error (every cause below included)
    rejected_queue_full: int = 0
    cancelled_before_prefill: int = 0
    cancelled_running: int = 0
    failed_on_stop: int = 0  # running or queued when the model stopped

    @property
    def open(self) -> int:
        """Jobs not answered yet (0 after `stop()`)."""
        return self.submitted - self.finished - self.failed


class ContinuousBatchScheduler:
    """Admits jobs between decode steps and decodes them together, in one or more lanes.

    A lane (`Lane`) is one continuous batch with its own thread. With `lane_engines` (sessions of
    the same model with a share of the cores each, see `Engine.sibling`) every lane decodes on its
    own session and the lanes step at the same time: on CPU, one session's multi-threaded operators
    leave cores idle between and inside small operators, while independent single-thread sessions
    keep every core busy (2 cores, SmolLM2 int4, 8 streams: ~13% more tokens/s per step, and one
    lane's Python work overlaps the other's compute). A lane that is the only one with work runs on
    `engine` itself (all cores), so a lone stream is as fast as without lanes; a run on all the cores
    never overlaps a lane's own (a lane that gets work meanwhile waits for it to end, one step at
    most), so their threads never share a core (and the all-cores session's may spin inside its runs,
    see `Engine.load`). Jobs wait in one
    queue of at most `max_queued` (beyond it a job fails at once as UNAVAILABLE, which a gateway
    answers with 503 and Retry-After); a lane takes the next job only while it holds no more jobs
    than any other lane, so the lanes stay balanced. Without `lane_engines` there is one lane on
    `engine`.
    """

    def __init__(
        self,
        engine: Any,
        max_active: int,
        log: Callable[[str], None] = lambda _message: None,
        lane_engines: Sequence[Any] = (),
        max_queued: int | None = None,
    ) -> None:
        self.engine = engine
        self.log = log
        self.max_active = max_active
        self.max_queued = 4 * max_active if max_queued is None else max_queued
        self.pending: queue.Queue[Job | None] = queue.Queue()
        self.stopping = threading.Event()
        runners = list(lane_engines)[:max_active] or [engine]
        count = len(runners)
        self.lanes = [
            Lane(self, i, runner, max_active // count + (1 if i < max_active % count else 0))
            for i, runner in enumerate(runners)
        ]
        self._shared = engine if lane_engines else None  # all cores, for a lane that runs alone
        self._cores = threading.Condition()  # guards the two counts below
        self._shared_running = False  # a run on the all-cores engine is under way
        self._lane_runs = 0  # runs on the lanes' own sessions under way
        self.waits_for_shared = 0  # lane runs that waited for an all-cores run to end (tests, metrics)
        self._stats_lock = threading.Lock()
        self.max_batch_seen = 0  # largest batch one step advanced (for tests and metrics)
        self.counts = SchedulerCounts()

    @classmethod
    def with_lanes(
        cls,
        engine: Any,
        max_active: int,
        decode_lanes: int = 0,
        log: Callable[[str], None] = lambda _message: None,
        max_queued: int | None = None,
    ) -> ContinuousBatchScheduler:
        """A scheduler with `lane_count(decode_lanes, ...)` lanes, each on its own sibling session of
        `engine` with an equal share of its threads (one lane: `engine` itself)."""
        lanes = lane_count(decode_lanes, engine, max_active)
        threads = max(1, engine.num_threads // lanes)
        siblings = [engine.sibling(threads) for _ in range(lanes)] if lanes > 1 else []
        return cls(engine, max_active, log=log, lane_engines=siblings, max_queued=max_queued)

    @property
    def jobs(self) -> dict[str, Job]:
        """Every admitted job, over all lanes (a snapshot)."""
        return {k: v for lane in self.lanes for k, v in list(lane.jobs.items())}

    def start(self) -> None:
        """Start every lane's decode and writer threads."""
        for lane in self.lanes:
            lane.writer.start()
            lane.thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`; the next lane with room admits it between two decode steps. A full queue or a
        stopping scheduler fails it at once (UNAVAILABLE)."""
        self.count("submitted")
        if self.stopping.is_set():
            self.count("failed_on_stop")
            self.answer_now(job, JobError(SHUTTING_DOWN, "UNAVAILABLE"))
        elif self.pending.qsize() >= self.max_queued:
            self.count("rejected_queue_full")
            message = f"the model's queue is full ({self.max_queued} requests waiting); retry shortly"
            self.answer_now(job, JobError(message, "UNAVAILABLE"))
        else:
            self.pending.put(job)

    def answer_now(self, job: Job, error: JobError) -> None:
        """Fail `job` from the calling thread (it never reached a lane)."""
        self.count("failed")
        try:
            job.fail(error)
        except Exception:  # a client gone away must not break the caller
            traceback.print_exc()

    def count(self, name: str, amount: int = 1) -> None:
        """Add to one of `self.counts` (thread-safe)."""
        with self._stats_lock:
            setattr(self.counts, name, getattr(self.counts, name) + amount)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the lanes; fail the jobs still running, then those still queued; send every response
        (queued ones first). Every submitted job has been answered when this returns."""
        self.stopping.set()
        for _ in self.lanes:
            self.pending.put(None)
        for lane in self.lanes:
            lane.thread.join(timeout)
        for lane in self.lanes:
            for job in list(lane.jobs.values()):
                self.count("failed_on_stop")
                lane.fail(job, JobError(SHUTTING_DOWN, "UNAVAILABLE"))
        while True:  # queued jobs no lane took: answered by the first lane's writer, in order
            try:
                waiting = self.pending.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                self.count("failed_on_stop")
                self.lanes[0].fail(waiting, JobError(SHUTTING_DOWN, "UNAVAILABLE"))
        for lane in self.lanes:  # every queued response goes out before the model unloads
            lane.close_outbox(timeout)
        self.log(f"scheduler stopped: {self.counts} open={self.counts.open}")

    def may_take(self, lane: Lane) -> bool:
        """Whether `lane` may admit another job now: it has room and no other lane runs fewer sequences.
        (A job of n sequences may take a lane past its capacity by up to n - 1.)"""
        mine = lane.load
        return mine < lane.capacity and all(mine <= o.load for o in self.lanes if o is not lane)

    @contextlib.contextmanager
    def runner(self, lane: Lane) -> Iterator[Any]:
        """The session for lane's next call: the all-cores engine while no other lane has work and
        no other run is under way; else the lane's own, once no all-cores run is under way."""
        shared = self._shared
        if shared is None:
            yield lane.engine
            return
        with self._cores:
            alone = not any(o.jobs for o in self.lanes if o is not lane)
            use_shared = alone and not self._shared_running and self._lane_runs == 0
            if use_shared:
                self._shared_running = True
            else:
                if self._shared_running:
                    self.waits_for_shared += 1
                    self._cores.wait_for(lambda: not self._shared_running)
                self._lane_runs += 1
        try:
            yield shared if use_shared else lane.engine
        finally:
            with self._cores:
                if use_shared:
                    self._shared_running = False
                else:
                    self._lane_runs -= 1
                self._cores.notify_all()

    def record_step(self, size: int) -> None:
        """Note a decode step of `size` sequences (the largest one is logged)."""
        with self._stats_lock:
            if size <= self.max_batch_seen:
                return
            self.max_batch_seen = size
        self.log(f"decode step batched {size} sequences (new maximum)")


class Lane:
    """One continuous batch (`DecodeBatch`) driven by its own thread; see `ContinuousBatchScheduler`.

    Responses leave through the lane's writer thread, in the order the lane produced them: sending one
    is a round trip to the Triton process (~0.5 ms, measured here), which the decode loop no longer
    waits for (one stream: ~11% more tokens/s through Triton on 2 cores). Once the writer has stopped,
    a late response (a lane thread that outlived `stop`'s join) is sent by the thread that makes it.
    """

    def __init__(self, scheduler: ContinuousBatchScheduler, index: int, engine: Any, capacity: int) -> None:
        self.scheduler = scheduler
        self.index = index
        self.engine = engine
        self.capacity = capacity
        self.log = scheduler.log
        self.batch = engine.new_batch()
        self.jobs: dict[str, Job] = {}
        self.owners: dict[str, tuple[Job, SequenceOutput]] = {}  # running sequence id -> its job, output
        self.steps = 0
        self._last_cancel_check = 0.0
        self.thread = threading.Thread(target=self._run, name=f"tritonform-lane-{index}", daemon=True)
        self.outbox: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue()
        self.writer = threading.Thread(target=self._write, name=f"tritonform-writer-{index}", daemon=True)
        self._outbox_lock = threading.Lock()
        self._outbox_closed = False

    def _write(self) -> None:
        while (item := self.outbox.get()) is not None:
            _send(*item)

    def _post(self, send: Callable[..., None], args: tuple[Any, ...]) -> None:
        with self._outbox_lock:
            if not self._outbox_closed:
                self.outbox.put((send, args))
                return
        _send(send, args)

    def close_outbox(self, timeout: float) -> None:
        """Let the writer send what is queued and stop; later responses are sent directly."""
        with self._outbox_lock:
            self._outbox_closed = True
            self.outbox.put(None)
        self.writer.join(timeout)

    def _run(self) -> None:
        sched = self.scheduler
        while not sched.stopping.is_set():
            try:
                self._admit(block=not self.jobs)
                self._drop_cancelled()
                if self.jobs:
                    with sched.runner(self) as runner:
                        outputs = self.batch.step(runner)
                    self.steps += 1
                    sched.record_step(len(outputs))
                    for out in outputs:
                        self._on_token(out)
            except Exception as exc:  # the batched step itself broke: fail what ran, start a fresh batch
                message = JobError(f"generation failed: {exc}", "INTERNAL")
                traceback.print_exc()
                self.batch = self.engine.new_batch()  # first: failing a job leaves this (empty) batch alone
                for job in list(self.jobs.values()):
                    self.fail(job, message)

    def _admit(self, block: bool) -> None:
        sched = self.scheduler
        while sched.may_take(self):
            try:
                job = sched.pending.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            if job is None:  # stop() wakes the lanes
                return
            block = False
            self._start_job(job)

    @property
    def load(self) -> int:
        """Sequences running in this lane."""
        return len(self.owners)

    def _start_job(self, job: Job) -> None:
        if _cancelled(job):  # the client left while the job was queued: no prefill for nobody
            self.scheduler.count("cancelled_before_prefill")
            self.fail(job, JobError("request cancelled", "CANCELLED"))
            return
        request = job.request
        try:
            params = [request.sampling_params(i) for i in range(request.n)]
            ids = list(request.prompt_ids) if request.prompt_ids else self.engine.encode(request.prompt)
            job.prompt_tokens = len(ids)
            tokenizer = self.engine.tokenizer
            job.sequences = [SequenceOutput(i, tokenizer, request) for i in range(request.n)]
            seq_ids = [job.sequence_id(i) for i in range(request.n)]
            self.jobs[job.request_id] = job
            for seq_id, seq in zip(seq_ids, job.sequences, strict=True):
                self.owners[seq_id] = (job, seq)
            with self.scheduler.runner(self) as runner:
                if request.echo_logprobs:
                    job.echo = prompt_logprobs(runner, ids)
                firsts = self.batch.add_group(seq_ids, ids, params, runner)
        except EngineError as exc:
            self.fail(job, JobError(str(exc), "INVALID_ARG"))
            return
        except Exception as exc:  # e.g. an allocation failure on a long prefill: this job alone fails
            traceback.print_exc()
            self.fail(job, JobError(f"generation failed: {type(exc).__name__}: {exc}", "INTERNAL"))
            return
        for first in firsts:
            self._on_token(first)

    def _drop_cancelled(self) -> None:
        # is_cancelled() is a round trip to the Triton process: ask a few times a second, not every step
        now = time.monotonic()
        if now - self._last_cancel_check < CANCEL_CHECK_INTERVAL_S:
            return
        self._last_cancel_check = now
        for job in list(self.jobs.values()):
            if _cancelled(job):
                self.log(f"request {job.request_id} cancelled after {job.completion_tokens} tokens")
                self.scheduler.count("cancelled_running")
                self.fail(job, JobError("request cancelled", "CANCELLED"))

    def _on_token(self, out: Any) -> None:
        owner = self.owners.get(out.request_id)
        if owner is None:
            return
        job, seq = owner
        if out.error is not None:  # this sequence alone broke (the batch already dropped it)
            self.fail(job, JobError(f"generation failed: {out.error}", "INTERNAL"))
            return
        text, finished = seq.push(out)
        if finished:
            del self.owners[out.request_id]
            if not out.finished:  # a stop string ended it: leave the batch now
                self.batch.remove(out.request_id)
        last = finished and all(s.done for s in job.sequences)
        response = seq.response(text, last, job.prompt_tokens)
        if last:
            del self.jobs[job.request_id]
            self.scheduler.count("finished")
        if response is not None:
            if job.echo is not None:  # the prompt's logprobs ride on the job's first response
                response = response._replace(prompt_token_ids=job.echo[0], prompt_log_probs=job.echo[1])
                job.echo = None
            self._post(job.emit, (response,))

    def fail(self, job: Job, message: str) -> None:
        """End `job` with an error response, after whatever it was already sent; its sequences leave
        the batch."""
        self.jobs.pop(job.request_id, None)
        on_lane = threading.current_thread() is self.thread  # stop() fails jobs after the lane ended
        for index in range(len(job.sequences)):
            seq_id = job.sequence_id(index)
            if self.owners.pop(seq_id, None) is not None and on_lane:
                self.batch.remove(seq_id)
        self.scheduler.count("failed")
        error = message if isinstance(message, JobError) else JobError(message)
        self._post(job.fail, (error,))


def prompt_logprobs(runner: Any, ids: list[int]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The prompt's token ids and each one's logprob given the tokens before it (one extra forward
    over the prompt, raw logits); the first token has none: NaN."""
    logits = runner.prompt_logits(ids)
    values = [float("nan")]
    for position in range(1, len(ids)):
        values.append(float(log_softmax(logits[position - 1])[ids[position]]))
    return tuple(ids), tuple(values)


def _send(send: Callable[..., None], args: tuple[Any, ...]) -> None:
    try:
        send(*args)
    except Exception:  # a client that went away must not stop the others' responses
        traceback.print_exc()


def _cancelled(job: Job) -> bool:
    try:
        return bool(job.is_cancelled())
    except Exception:
        return False


def lane_count(setting: int, engine: Any, max_active: int) -> int:
    """How many lanes (see `ContinuousBatchScheduler`). 0 means auto: two on CPU when the engine has
    at least two threads, else one (a GPU batches by itself; extra sessions there only cost memory)."""
    if setting < 0:
        raise ValueError(f"decode_lanes={setting}: must be 0 (auto) or a positive number")
    if setting == 0:
        cpu_only = list(engine.providers)[:1] == ["CPUExecutionProvider"]
        setting = 2 if cpu_only and engine.num_threads >= 2 else 1
    return max(1, min(setting, max_active))
