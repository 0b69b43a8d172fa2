"""`create_app(settings)`: the OpenAI-compatible gateway in front of one Triton generation model.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (Bearer key),
`GET /healthz` (process), `GET /readyz` (Triton ready and model loaded), `GET /metrics` (Prometheus),
`GET /canary` (a canary rollout's split, window figures and decision; serving/gateway/canary.py).
Middleware, outermost first: request id + access log + metrics, API key check, body size cap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.gateway.answers import ChatAnswer, CompletionAnswer
from serving.gateway.canary import canary_backend_settings
from serving.gateway.errors import error_body, install_error_handlers
from serving.gateway.generation import Gateway
from serving.gateway.limits import ApiKeyAuth, BodySizeLimit
from serving.gateway.observability import LOGGER_NAME, RequestContext, configure_logging
from serving.gateway.replicas import triton_backend
from serving.gateway.responses import (
    ChatCompletionResponse,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from serving.gateway.schemas import ChatCompletionRequest, CompletionRequest
from serving.gateway.settings import GatewaySettings
from serving.gateway.streaming import complete, stream
from serving.gateway.triton import TritonGenerator

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
        503: "Triton is unreachable, the model is not loaded or its queue is full (see Retry-After)",
        504: "generation timed out",
    }.items()
}


def create_app(
    settings: GatewaySettings,
    backend: TritonGenerator | None = None,
    on_cold: Callable[[], None] | None = None,
    canary_backend: TritonGenerator | None = None,
) -> FastAPI:
    """Build the gateway; Triton's gRPC client is opened on startup and closed on shutdown (`backend`:
    another generator to use instead, for tests; `on_cold`: called when requests start waiting for
    Triton, see serving/gateway/holding.py; `canary_backend`: the canary's generator, for tests).
    `app.state.gateway.shutdown()` stops it early."""
    configure_logging(settings.log_level)
    gateway = Gateway(settings, on_cold)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        gateway.loop = asyncio.get_running_loop()
        gateway.triton = backend or triton_backend(settings)
        if settings.has_canary:
            gateway.canary_triton = canary_backend or triton_backend(canary_backend_settings(settings))
        log.info("gateway started", extra={"triton": settings.triton_grpc_url, "model": settings.model_name})
        try:
            yield
        finally:
            await gateway.shutdown()

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
        """Triton is reachable, ready, and the model is loaded; with the cold-start hold on, the gateway is
        ready while Triton is not (it holds requests, so Triton can scale from zero), and says so."""
        if gateway.draining or gateway.triton is None:
            return JSONResponse(error_body(503, "the gateway is not serving (starting or stopping)"), 503)
        reason = await gateway.triton.not_ready_reason()
        if reason and gateway.hold.enabled:
            return JSONResponse({"status": "ready", "model": settings.public_model_name, "triton": reason})
        if reason:
            return JSONResponse(error_body(503, reason), 503)
        return JSONResponse({"status": "ready", "model": settings.public_model_name})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/canary", tags=["ops"])
    async def canary() -> dict[str, Any]:
        """The canary rollout: versions, weights, both versions' window figures, the rollback decision
        (`{"canary": null}` without one)."""
        return gateway.canary.status() if gateway.canary is not None else {"canary": None}

    @app.get("/v1/models", dependencies=secured, responses=_ERRORS)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.public_model_name, created=gateway.created)])

    @app.post("/v1/completions", dependencies=secured, responses=_ERRORS, response_model=CompletionResponse)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """A text completion (OpenAI's Completions API; README lists each parameter's support)."""
        gen = await gateway.admit("/v1/completions", request, body)
        token_bytes, answer_id = gateway.token_bytes_of(gen), f"cmpl-{request.state.request_id}"
        answer = CompletionAnswer(gen, token_bytes, body.model, answer_id)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return await stream(gateway, request, gen, answer, include)
        await complete(gateway, request, gen)
        return answer.response()

    @app.post(
        "/v1/chat/completions", dependencies=secured, responses=_ERRORS, response_model=ChatCompletionResponse
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """A chat completion (OpenAI's Chat Completions API: tools, structured output, logprobs, n;
        README lists each parameter's support)."""
        gen = await gateway.admit("/v1/chat/completions", request, body)
        token_bytes, answer_id = gateway.token_bytes_of(gen), f"chatcmpl-{request.state.request_id}"
        answer = ChatAnswer(gen, token_bytes, body.model, answer_id)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return await stream(gateway, request, gen, answer, include)
        await complete(gateway, request, gen)
        return answer.response()

    return app


def server_config(
    app: FastAPI, settings: GatewaySettings, host: str, port: int, **options: Any
) -> uvicorn.Config:
    """uvicorn's configuration for the gateway `app` (the container's command, the local stack and the
    tests all serve it through this): an idle keep-alive connection stays open `settings.keep_alive_s`."""
    return uvicorn.Config(
        app, host=host, port=port, access_log=False, timeout_keep_alive=settings.keep_alive_s, **options
    )
