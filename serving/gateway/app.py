"""`create_app(settings)`: the OpenAI-compatible gateway in front of one Triton generation model.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (Bearer key),
`GET /healthz` (process), `GET /readyz` (Triton ready and model loaded), `GET /metrics` (Prometheus).
Middleware, outermost first: request id + access log + metrics, API key check, body size cap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.gateway.errors import ApiError, error_body, install_error_handlers
from serving.gateway.limits import ApiKeyAuth, ApiKeys, BodySizeLimit, RateLimiter
from serving.gateway.observability import LOGGER_NAME, GatewayMetrics, RequestContext, configure_logging
from serving.gateway.prompts import PromptError, PromptFormatter
from serving.gateway.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)
from serving.gateway.settings import GatewaySettings
from serving.gateway.triton import Delta, GenerationParams, TritonError, TritonGenerator

T = TypeVar("T")
log = logging.getLogger(LOGGER_NAME)
_bearer = HTTPBearer(auto_error=False, description="an API key of this gateway")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "invalid request (the message names the field or limit)",
        401: "missing or invalid API key",
        404: "unknown model",
        413: "request body too large",
        429: "rate limit or concurrency limit reached (see Retry-After)",
        503: "Triton is unreachable or the model is not loaded",
        504: "generation timed out",
    }.items()
}


@dataclass
class Generation:
    """A request that passed every check: what to send to Triton and how to account for it."""

    route: str
    key_id: str
    params: GenerationParams
    prompt_tokens: int
    reserved_tokens: int
    started: float = field(default_factory=time.perf_counter)
    text: list[str] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    first_token_at: float | None = None
    completion_tokens: int | None = 0  # summed over the stream; None if Triton does not report it


class Gateway:
    """Everything a route needs; one per app (no module-level state)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.keys = ApiKeys(settings.resolved_api_keys())
        self.prompts = PromptFormatter.load(settings.resolved_tokenizer_dir())
        self.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self.metrics = GatewayMetrics()
        self.triton: TritonGenerator | None = None
        self.in_flight = 0
        self.created = int(time.time())

    def backend(self) -> TritonGenerator:
        if self.triton is None:
            raise ApiError(503, "the gateway is starting; try again shortly")
        return self.triton

    # -- admission -------------------------------------------------------------------------------
    def admit(
        self, route: str, request: Request, body: CompletionRequest | ChatCompletionRequest, prompt: str
    ) -> Generation:
        s = self.settings
        if body.model != s.public_model_name:
            raise ApiError(
                404,
                f"model {body.model!r} does not exist; this server serves {s.public_model_name!r}",
                param="model",
                code="model_not_found",
            )
        max_tokens = body.requested_max_tokens() or s.default_max_tokens
        if max_tokens > s.max_tokens_cap:
            raise ApiError(
                400,
                f"max_tokens={max_tokens} is over this server's limit max_tokens_cap={s.max_tokens_cap}",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        prompt_tokens = self.prompts.count_tokens(prompt)
        if prompt_tokens > s.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {prompt_tokens} tokens, over this server's limit "
                f"max_prompt_tokens={s.max_prompt_tokens}",
                param="messages" if "chat" in route else "prompt",
                code="context_length_exceeded",
            )
        if self.in_flight >= s.max_concurrent_requests:
            raise ApiError(
                429,
                f"the server is busy (max_concurrent_requests={s.max_concurrent_requests}); retry shortly",
                headers={"Retry-After": "1"},
                code="server_busy",
            )
        key = str(request.state.key_id)
        reserve = prompt_tokens + max_tokens
        wait = self.limiter.admit(key, reserve)
        if wait:
            raise ApiError(
                429,
                f"rate limit reached for this API key (requests_per_minute={s.requests_per_minute},"
                f" tokens_per_minute={s.tokens_per_minute}); retry in {wait} s",
                headers={"Retry-After": str(wait)},
                code="rate_limit_exceeded",
            )
        if s.log_prompts:
            log.info("prompt", extra={"prompt": prompt})
        params = GenerationParams(
            prompt, max_tokens, body.temperature, body.top_p, body.seed, tuple(body.stop_list()), body.stream
        )
        return Generation(route, key, params, prompt_tokens, reserve)

    # -- generation ------------------------------------------------------------------------------
    async def deltas(self, gen: Generation, request_id: str) -> AsyncGenerator[Delta, None]:
        """Triton's deltas, with metrics and the token refund when the generation ends."""
        self.in_flight += 1
        self.metrics.in_flight.inc()
        stream = self.backend().generate(gen.params, request_id, self.settings.generation_timeout_s)
        try:
            async for delta in stream:
                if gen.first_token_at is None and (delta.text or delta.final):
                    gen.first_token_at = time.perf_counter()
                    self.metrics.ttft.labels(gen.route).observe(gen.first_token_at - gen.started)
                gen.text.append(delta.text)
                if delta.completion_tokens is None or gen.completion_tokens is None:
                    gen.completion_tokens = None
                else:
                    gen.completion_tokens += delta.completion_tokens  # per response, as TRT-LLM
                if delta.final:
                    self._finish(gen, delta)
                yield delta
        except TritonError as exc:
            self.metrics.triton_errors.labels(str(exc.status)).inc()
            raise
        finally:
            await stream.aclose()
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            used = gen.usage.total_tokens if gen.usage else gen.prompt_tokens
            self.limiter.refund(gen.key_id, gen.reserved_tokens - used)

    def _finish(self, gen: Generation, last: Delta) -> None:
        text = "".join(gen.text)
        completion = gen.completion_tokens
        if completion is None:
            completion = self.prompts.count_tokens(text)
        prompt = last.prompt_tokens if last.prompt_tokens is not None else gen.prompt_tokens
        gen.usage = Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
        gen.finish_reason = "length" if completion >= gen.params.max_tokens else "stop"
        self.metrics.completion_tokens.inc(completion)
        self.metrics.prompt_tokens.inc(prompt)


def _api_error(exc: TritonError) -> ApiError:
    headers = {"Retry-After": "2"} if exc.status == 503 else None
    return ApiError(exc.status, exc.message, kind=exc.kind, headers=headers)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client goes away first, cancel it (which cancels the Triton request)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ApiError(499, "client disconnected")
    finally:
        if not task.done():
            task.cancel()


async def _collect(gateway: Gateway, gen: Generation, request_id: str) -> Generation:
    try:
        async for _ in gateway.deltas(gen, request_id):
            pass
    except TritonError as exc:
        raise _api_error(exc) from None
    return gen


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def _stream(
    gateway: Gateway, request: Request, gen: Generation, chunk: Any, include_usage: bool
) -> StreamingResponse:
    """Start the generation, wait for Triton's first answer (so errors still get a status code),
    then stream server-sent events; the iterator is closed (and Triton cancelled) on disconnect."""
    request_id = request.state.request_id
    deltas = gateway.deltas(gen, request_id)
    try:
        first = await _unless_disconnected(request, anext(deltas))
    except TritonError as exc:
        await deltas.aclose()
        raise _api_error(exc) from None
    except BaseException:
        await deltas.aclose()
        raise

    async def events() -> AsyncIterator[str]:
        try:
            yield _sse(chunk(None, None, role=True))
            delta: Delta | None = first
            while delta is not None:
                if delta.text:
                    yield _sse(chunk(delta.text, None))
                if delta.final:
                    break
                delta = await anext(deltas, None)
            yield _sse(chunk(None, gen.finish_reason))
            if include_usage and gen.usage is not None:
                yield _sse(chunk(None, None, usage=gen.usage))
        except TritonError as exc:
            yield _sse(error_body(exc.status, exc.message, exc.kind))
        finally:
            await deltas.aclose()
            request.state.usage = gen.usage.model_dump() if gen.usage else None
        yield _sse("[DONE]")

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def create_app(settings: GatewaySettings) -> FastAPI:
    """Build the gateway; Triton's gRPC client is opened on startup and closed on shutdown."""
    configure_logging(settings.log_level)
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        gateway.triton = TritonGenerator(
            settings.triton_grpc_url, settings.model_name, settings.triton_check_timeout_s
        )
        log.info("gateway started", extra={"triton": settings.triton_grpc_url, "model": settings.model_name})
        try:
            yield
        finally:
            triton, gateway.triton = gateway.triton, None
            await triton.close()

    app = FastAPI(
        title="tritonform gateway",
        version="1",
        lifespan=lifespan,
        description="OpenAI-compatible API in front of a Triton generation model.",
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyAuth, keys=gateway.keys)
    app.add_middleware(RequestContext, metrics=gateway.metrics)
    secured = [Depends(_bearer)]

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The gateway process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        """Triton is reachable, ready, and the model is loaded."""
        reason = await gateway.backend().not_ready_reason()
        if reason:
            return JSONResponse(error_body(503, reason), 503)
        return JSONResponse({"status": "ready", "model": settings.public_model_name})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=secured, responses=_ERRORS)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.public_model_name, created=gateway.created)])

    @app.post("/v1/completions", dependencies=secured, responses=_ERRORS, response_model=CompletionResponse)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        gen = gateway.admit("/v1/completions", request, body, body.prompt_text())
        rid = request.state.request_id

        def chunk(
            text: str | None, finish: str | None, role: bool = False, usage: Usage | None = None
        ) -> Any:
            if role:
                return None if text is None else chunk(text, finish)
            return {
                "id": f"cmpl-{rid}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.model,
                "choices": []
                if usage
                else [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}],
                "usage": usage.model_dump() if usage else None,
            }

        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream(gateway, request, gen, _skip_none(chunk), include)
        await _unless_disconnected(request, _collect(gateway, gen, rid))
        request.state.usage = gen.usage.model_dump() if gen.usage else None
        return CompletionResponse(
            id=f"cmpl-{rid}",
            created=int(time.time()),
            model=body.model,
            usage=gen.usage,
            choices=[CompletionChoice(text="".join(gen.text), finish_reason=_fr(gen))],
        )

    @app.post(
        "/v1/chat/completions", dependencies=secured, responses=_ERRORS, response_model=ChatCompletionResponse
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        try:
            prompt = gateway.prompts.render_chat(messages)
        except PromptError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        gen = gateway.admit("/v1/chat/completions", request, body, prompt)
        rid = request.state.request_id

        def chunk(
            text: str | None, finish: str | None, role: bool = False, usage: Usage | None = None
        ) -> Any:
            delta: dict[str, str] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            return {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.model,
                "choices": []
                if usage
                else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                "usage": usage.model_dump() if usage else None,
            }

        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream(gateway, request, gen, chunk, include)
        await _unless_disconnected(request, _collect(gateway, gen, rid))
        assert gen.usage is not None
        request.state.usage = gen.usage.model_dump()
        return ChatCompletionResponse(
            id=f"chatcmpl-{rid}",
            created=int(time.time()),
            model=body.model,
            usage=gen.usage,
            choices=[ChatChoice(message=AssistantMessage(content="".join(gen.text)), finish_reason=_fr(gen))],
        )

    return app


def _fr(gen: Generation) -> Any:
    return gen.finish_reason


def _skip_none(chunk: Any) -> Any:
    """Completions have no role chunk: turn it into an empty text chunk (clients ignore it)."""

    def wrapped(text: str | None, finish: str | None, role: bool = False, usage: Usage | None = None) -> Any:
        if role:
            return chunk("", None)
        return chunk(text, finish, usage=usage)

    return wrapped
