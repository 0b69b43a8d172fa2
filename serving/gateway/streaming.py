"""How a generation's answer reaches the client: one JSON body, or server-sent events.

The generation runs in a task of its own (`_Pump`) that alone drives Triton's stream, so a client that
leaves only cancels that task: the Triton request is cancelled, the slot released and the unused
tokens refunded, with nothing logged as an error and the request recorded as 499 when no answer had
started. A stream waits `stream_first_token_wait_s` for Triton's first answer, so that errors found at
once (400, 503 queue full) still get their status code; after that it sends its headers and SSE
comments every `stream_keepalive_s` until the first token, so that a load balancer's idle timeout does
not cut a request that waits in the model's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from serving.gateway.errors import ApiError, error_body
from serving.gateway.generation import Gateway, Generation
from serving.gateway.observability import CLIENT_CLOSED
from serving.gateway.triton import Delta, TritonError

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25


class Answer(Protocol):
    """Turns a generation's deltas into stream chunks (serving/gateway/answers.py)."""

    def first(self) -> list[dict[str, Any]]: ...
    def delta(self, delta: Delta) -> list[dict[str, Any]]: ...
    def finish(self, include_usage: bool) -> list[dict[str, Any]]: ...


_END = object()


def api_error(exc: TritonError) -> ApiError:
    """Triton's failure as the client's answer (503 carries Retry-After; 499 is a cancelled request)."""
    headers = {"Retry-After": "2"} if exc.status == 503 else None
    return ApiError(exc.status, exc.message, kind=exc.kind, headers=headers)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client goes away first, cancel it and answer 499 (nobody reads it)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ApiError(CLIENT_CLOSED, "client disconnected")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def complete(gateway: Gateway, request: Request, gen: Generation) -> Generation:
    """Run `gen` to its end for a non-streaming answer (the slot is released however it ends)."""

    stopping = asyncio.Event()  # set by the gateway's shutdown: answer 503 instead of waiting on

    async def collect() -> None:
        try:
            async for _ in gateway.deltas(gen, request.state.request_id):
                pass
        except TritonError as exc:
            raise api_error(exc) from None

    async def until_stopped() -> None:
        collecting = asyncio.ensure_future(collect())
        halted = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({collecting, halted}, return_when=asyncio.FIRST_COMPLETED)
            if not collecting.done():
                raise api_error(TritonError(503, SHUTTING_DOWN, "service_unavailable"))
            collecting.result()
        finally:
            for task in (collecting, halted):
                task.cancel()
            with contextlib.suppress(BaseException):
                await collecting

    gateway.interrupts.add(stopping.set)
    try:
        await unless_disconnected(request, until_stopped())
    finally:
        gateway.interrupts.discard(stopping.set)
        await gateway.release(gen)
    request.state.usage = gen.usage.model_dump() if gen.usage else None
    return gen


class _Pump:
    """The generation in its own task, its deltas (or its error, or the end) put on a queue."""

    def __init__(self, gateway: Gateway, gen: Generation, request_id: str) -> None:
        self.gateway, self.gen = gateway, gen
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(request_id))
        gateway.interrupts.add(self.interrupt)

    def interrupt(self) -> None:
        """The server stops: end this generation with an error the client receives as its last event."""
        self.queue.put_nowait(TritonError(503, SHUTTING_DOWN, "service_unavailable"))
        self.task.cancel()

    async def _run(self, request_id: str) -> None:
        deltas = self.gateway.deltas(self.gen, request_id)
        try:
            async for delta in deltas:
                self.queue.put_nowait(delta)
            self.queue.put_nowait(_END)
        except TritonError as exc:
            self.queue.put_nowait(exc)
        except ApiError as exc:  # the gateway stopped before the generation began
            self.queue.put_nowait(TritonError(exc.status, exc.message, exc.kind))
        finally:
            self.gateway.interrupts.discard(self.interrupt)
            await deltas.aclose()
            await self.gateway.release(self.gen)

    async def next(self, timeout: float | None) -> Any:
        """The next item (a Delta, a TritonError or _END); None if `timeout` passed first."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def stop(self) -> None:
        """Cancel the generation (if still running) and wait until it released everything."""
        if not self.task.done():
            self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


SHUTTING_DOWN = "the server is shutting down; this answer is incomplete, send the request again"


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def stream(
    gateway: Gateway, request: Request, gen: Generation, answer: Answer, include_usage: bool
) -> StreamingResponse:
    """Start `gen` and answer with server-sent events (see the module docs for the first wait)."""
    settings = gateway.settings
    pump = _Pump(gateway, gen, request.state.request_id)
    try:
        first = await unless_disconnected(request, pump.next(settings.stream_first_token_wait_s))
    except BaseException:
        await pump.stop()
        raise
    if isinstance(first, TritonError):
        await pump.stop()
        raise api_error(first)

    async def events() -> AsyncIterator[str]:
        item = first
        try:
            if item is None:
                yield ": waiting for the model\n\n"  # headers and a first byte before the first token
            for payload in answer.first():
                yield _sse(payload)
            while item is None or isinstance(item, Delta):
                if isinstance(item, Delta):
                    for payload in answer.delta(item):
                        yield _sse(payload)
                    if item.final:
                        break
                    item = await pump.next(None)
                else:
                    item = await pump.next(settings.stream_keepalive_s)
                    if item is None:
                        yield ": keep-alive\n\n"
            if isinstance(item, TritonError):
                yield _sse(error_body(item.status, item.message, item.kind))
            else:
                for payload in answer.finish(include_usage):
                    yield _sse(payload)
        finally:
            await pump.stop()
            request.state.usage = gen.usage.model_dump() if gen.usage else None
        yield _sse("[DONE]")

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
