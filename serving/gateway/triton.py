"""The gateway's only way to Triton: tritonclient's asyncio gRPC client, one stream per request.

Works with the python-backend model (tensor names in model_repo/spec.py) and TensorRT-LLM's LLM API
model (its own names, serving/gateway/llmapi.py), chosen from the model's config. The model's config
is read once (batch dimension, which optional inputs it has) and read again after Triton was
unreachable, so a restarted or replaced Triton is picked up.
Every failure becomes a `TritonError` carrying the HTTP status the gateway should answer with, chosen by
status code, never by words in a message: gRPC's code for a failed call; for an error inside the
stream (where Triton passes only the message) the `[CODE]` the python model puts first (see
model_repo/spec.py), else what Triton's status-coded readiness call says about the model. A request
that Triton refuses because the model was reloaded with another layout (batch dimension, inputs) is
sent once more with the new layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, triton_to_np_dtype

from serving.gateway.llmapi import LlmApiUnsupported, is_llmapi, llmapi_inputs

# Reconnect fast after Triton restarts (gRPC's default backoff grows to two minutes).
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class TritonError(Exception):
    """A generation that failed; `status` is the HTTP status for the client."""

    def __init__(self, status: int, message: str, kind: str = "server_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass(frozen=True)
class GenerationParams:
    """One request's inputs (model_repo/spec.py's contract); defaults mean "as without the input"."""

    prompt: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    prompt_ids: tuple[int, ...] | None = None  # sent as `input_ids` when the model takes them
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    guide: tuple[str, str] | None = None  # (guided_decoding_guide_type, guided_decoding_guide)
    echo_logprobs: bool = False  # the prompt's logprobs too (completions echo + logprobs)


@dataclass(frozen=True)
class Delta:
    """One response from Triton: new text, final flag, and token counts when the model reports them
    (`completion_tokens` counts the tokens behind this response; the ensemble has no `prompt_tokens`),
    the `finish_reason` on a sequence's last response (None when the model has no such output), which
    of the n sequences it belongs to, and the tokens behind its text with their logprobs."""

    text: str
    final: bool
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    sequence_index: int = 0
    token_ids: tuple[int, ...] = ()
    log_probs: tuple[float, ...] = ()
    top_token_ids: tuple[int, ...] = ()
    top_log_probs: tuple[float, ...] = ()
    prompt_token_ids: tuple[int, ...] = ()
    prompt_log_probs: tuple[float, ...] = ()


# The python model's error codes (Triton's names) -> (HTTP status, OpenAI error type)
_MODEL_ERRORS: dict[str, tuple[int, str]] = {
    "INVALID_ARG": (400, "invalid_request_error"),
    "UNAVAILABLE": (503, "unavailable"),
    "CANCELLED": (499, "cancelled"),
    "INTERNAL": (502, "server_error"),
}
_CODED = re.compile(r"^\[([A-Z_]+)\] (.*)$", re.DOTALL)


@dataclass(frozen=True)
class _ModelLayout:
    batched: bool
    inputs: frozenset[str]


class TritonGenerator:
    """Streams generations from one Triton model over gRPC."""

    def __init__(self, url: str, model_name: str, check_timeout_s: float = 2.0) -> None:
        self.url, self.model_name, self.check_timeout_s = url, model_name, check_timeout_s
        self.client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._layout: _ModelLayout | None = None

    async def close(self) -> None:
        await self.client.close()

    # -- readiness ------------------------------------------------------------------------------
    async def not_ready_reason(self) -> str | None:
        """None when Triton is up and the model is loaded, else a sentence saying what is wrong."""
        try:
            if not await self.client.is_server_ready(client_timeout=self.check_timeout_s):
                return f"Triton at {self.url} is not ready"
            if not await self.client.is_model_ready(self.model_name, client_timeout=self.check_timeout_s):
                return f"model {self.model_name!r} is not loaded in Triton at {self.url}"
        except InferenceServerException as exc:
            self._layout = None
            return f"Triton at {self.url} is unreachable ({_short(exc)})"
        return None

    async def _model_layout(self) -> _ModelLayout:
        if self._layout is None:
            try:
                answer = await self.client.get_model_config(
                    self.model_name, as_json=True, client_timeout=self.check_timeout_s
                )
            except InferenceServerException as exc:
                raise _classify_exception(exc, self.url, self.model_name) from None
            config: dict[str, Any] = answer.get("config", answer)
            self._layout = _ModelLayout(
                batched=int(config.get("max_batch_size", 0)) > 0,
                inputs=frozenset(str(i["name"]) for i in config.get("input", [])),
            )
        return self._layout

    # -- generation -----------------------------------------------------------------------------
    async def generate(
        self, params: GenerationParams, request_id: str, timeout_s: float
    ) -> AsyncGenerator[Delta, None]:
        """Yield Triton's responses until the final one; closing the iterator cancels the request."""
        layout = await self._model_layout()
        try:
            async for delta in self._stream(params, request_id, timeout_s, layout):
                yield delta
        except _Refused as refused:  # nothing was generated: find out why, maybe send it again
            self._layout = None
            try:
                fresh = await self._model_layout()
            except TritonError:
                raise
            if fresh != layout:
                async for delta in self._stream(params, request_id, timeout_s, fresh):
                    yield delta
                return
            raise await self._refusal(refused.message) from None

    async def _stream(
        self, params: GenerationParams, request_id: str, timeout_s: float, layout: _ModelLayout
    ) -> AsyncGenerator[Delta, None]:
        request = {"model_name": self.model_name, "inputs": _inputs(params, layout), "request_id": request_id}
        finished = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request
            await finished.wait()  # keep our side open until the last response arrived

        call: Any = None
        clean = False
        answered = False
        try:
            call = self.client.stream_infer(requests(), stream_timeout=timeout_s)
            async for result, error in call:
                if error is not None:
                    coded = _coded_error(error)
                    if coded is not None:
                        raise coded
                    if not answered:
                        raise _Refused(_short(error))
                    raise TritonError(502, f"generation failed in Triton: {_short(error)}")
                delta = _delta(result)
                answered = True
                if delta.final:
                    clean = True
                yield delta
                if delta.final:
                    return
            raise TritonError(502, "Triton closed the stream before the final response")
        except grpc.aio.AioRpcError as exc:
            raise self._classify_rpc(exc) from None
        except InferenceServerException as exc:
            raise _classify_exception(exc, self.url, self.model_name) from None
        finally:
            finished.set()
            if call is not None and not clean:
                with contextlib.suppress(Exception):
                    call.cancel()  # client went away, timeout or error: stop the generation in Triton

    async def _refusal(self, message: str) -> TritonError:
        """Why Triton refused a request of the current layout, from its status-coded readiness call."""
        reason = await self.not_ready_reason()
        if reason:
            return TritonError(503, reason, "unavailable")
        return TritonError(502, f"Triton refused the request: {message}")

    def _classify_rpc(self, exc: grpc.aio.AioRpcError) -> TritonError:
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return TritonError(504, "generation timed out", "timeout")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            self._layout = None
            return TritonError(503, f"Triton at {self.url} is unreachable; try again shortly", "unavailable")
        return TritonError(502, f"Triton failed: {code.name}: {exc.details()}")


class _Refused(Exception):
    """Triton answered a request with an error before any response and without the model's code."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _coded_error(error: BaseException) -> TritonError | None:
    """The python model's error (`[CODE] message`) as the gateway's answer; None for other errors."""
    text = str(error.message() if isinstance(error, InferenceServerException) else error)
    match = _CODED.match(text)
    if match is None or match.group(1) not in _MODEL_ERRORS:
        return None
    status, kind = _MODEL_ERRORS[match.group(1)]
    message = match.group(2).removeprefix("bad request:").strip()
    return TritonError(status, message.splitlines()[0][:500] if message else "error", kind)


def _short(exc: BaseException) -> str:
    text = str(exc.message() if isinstance(exc, InferenceServerException) else exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _classify_exception(exc: InferenceServerException, url: str, model: str) -> TritonError:
    """A failed status-coded call (config, readiness) by its gRPC status code."""
    status = str(exc.status() or "").removeprefix("StatusCode.")
    if status == "NOT_FOUND":
        return TritonError(503, f"model {model!r} is not loaded in Triton at {url}", "unavailable")
    if status in ("UNAVAILABLE", "CANCELLED"):
        return TritonError(503, f"Triton at {url} is unreachable; try again shortly", "unavailable")
    if status == "DEADLINE_EXCEEDED":
        return TritonError(504, "generation timed out", "timeout")
    return TritonError(502, f"Triton failed: {status or 'error'}: {_short(exc)}")


def _tensor(name: str, value: np.ndarray, datatype: str, batched: bool) -> grpcclient.InferInput:
    if batched:
        value = value.reshape(1, *value.shape)
    tensor = grpcclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


# Parameters the model must take when a request uses them: (OpenAI parameter, the model's inputs)
_NEEDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("top_k", ("top_k",)),
    ("min_p", ("min_p",)),
    ("repetition_penalty", ("repetition_penalty",)),
    ("frequency_penalty", ("frequency_penalty",)),
    ("presence_penalty", ("presence_penalty",)),
    ("logit_bias", ("logit_bias_ids", "logit_bias_values")),
    ("logprobs", ("return_log_probs",)),
    ("top_logprobs", ("top_logprobs",)),
    ("n", ("num_return_sequences",)),
    ("guide", ("guided_decoding_guide_type", "guided_decoding_guide")),
    ("echo_logprobs", ("echo_prompt_logprobs",)),
)
_PUBLIC_NAMES = {"guide": "response_format/tools", "echo_logprobs": "echo with logprobs"}


def _used(p: GenerationParams, name: str) -> bool:
    value, default = getattr(p, name), GenerationParams.__dataclass_fields__[name].default
    return bool(value != default)


def _inputs(p: GenerationParams, layout: _ModelLayout) -> list[grpcclient.InferInput]:
    if is_llmapi(layout.inputs):  # TensorRT-LLM's LLM API model: its own tensor names
        try:
            return llmapi_inputs(p, _tensor)
        except LlmApiUnsupported as exc:
            raise TritonError(400, str(exc), "invalid_request_error") from None
    b = layout.batched
    for name, needed in _NEEDS:
        missing = [t for t in needed if t not in layout.inputs]
        if missing and _used(p, name):
            public = _PUBLIC_NAMES.get(name, name)
            raise TritonError(
                400,
                f"{public}: the served model has no input {missing[0]} (a repository built before this "
                "feature, or a backend without it); rebuild the repository or leave the parameter out",
                "invalid_request_error",
            )
    inputs = []
    if p.prompt_ids is not None and "input_ids" in layout.inputs:
        inputs.append(_tensor("input_ids", np.array(p.prompt_ids, dtype=np.int32), "INT32", b))
    inputs += [
        _tensor("text_input", np.array([p.prompt.encode("utf-8")], dtype=np.object_), "BYTES", b),
        _tensor("max_tokens", np.array([p.max_tokens], dtype=np.int32), "INT32", b),
    ]
    optional: list[tuple[str, np.ndarray, str]] = [
        ("temperature", np.array([p.temperature], dtype=np.float32), "FP32"),
        ("top_p", np.array([p.top_p], dtype=np.float32), "FP32"),
        ("stream", np.array([p.stream], dtype=bool), "BOOL"),
    ]
    if p.seed is not None:
        optional.append(("random_seed", np.array([p.seed], dtype=np.uint64), "UINT64"))
    if p.stop:
        optional.append(
            ("stop_words", np.array([s.encode("utf-8") for s in p.stop], dtype=np.object_), "BYTES")
        )
    scalars: list[tuple[str, str, type, str]] = [
        ("top_k", "top_k", np.int32, "INT32"),
        ("min_p", "min_p", np.float32, "FP32"),
        ("repetition_penalty", "repetition_penalty", np.float32, "FP32"),
        ("frequency_penalty", "frequency_penalty", np.float32, "FP32"),
        ("presence_penalty", "presence_penalty", np.float32, "FP32"),
        ("logprobs", "return_log_probs", bool, "BOOL"),
        ("top_logprobs", "top_logprobs", np.int32, "INT32"),
        ("n", "num_return_sequences", np.int32, "INT32"),
        ("echo_logprobs", "echo_prompt_logprobs", bool, "BOOL"),
    ]
    for field_name, tensor, dtype, datatype in scalars:
        if _used(p, field_name):
            optional.append((tensor, np.array([getattr(p, field_name)], dtype=dtype), datatype))
    if p.logit_bias:
        ids = np.array([i for i, _ in p.logit_bias], dtype=np.int32)
        optional.append(("logit_bias_ids", ids, "INT32"))
        optional.append(("logit_bias_values", np.array([v for _, v in p.logit_bias], np.float32), "FP32"))
    if p.guide is not None:
        for tensor, text in zip(
            ("guided_decoding_guide_type", "guided_decoding_guide"), p.guide, strict=True
        ):
            optional.append((tensor, np.array([text.encode("utf-8")], dtype=np.object_), "BYTES"))
    for name, value, datatype in optional:
        if name in layout.inputs:
            inputs.append(_tensor(name, value, datatype, b))
    return inputs


def _outputs(result: Any) -> dict[str, np.ndarray]:
    """One response's outputs by name, each a flat numpy array (BYTES: of bytes objects). Read in one
    pass over the raw contents Triton sends: tritonclient's `as_numpy` looks each name up again and
    builds a shaped array, which made reading a streamed token's 6 outputs the gateway's largest Python
    cost a token (65 us here; ~21 us this way). Contents sent in the typed fields instead (not what
    Triton does) go through `as_numpy`."""
    response = result.get_response()
    outputs, raw = response.outputs, response.raw_output_contents
    if len(raw) != len(outputs):
        return {o.name: result.as_numpy(o.name).reshape(-1) for o in outputs}
    return {
        output.name: deserialize_bytes_tensor(data)
        if output.datatype == "BYTES"
        else np.frombuffer(data, dtype=_numpy_type(output.datatype))
        for output, data in zip(outputs, raw, strict=True)
    }


@functools.cache
def _numpy_type(datatype: str) -> Any:
    return triton_to_np_dtype(datatype)


def _delta(result: Any) -> Delta:
    values = _outputs(result)

    def first(name: str) -> Any:
        value = values.get(name)
        return None if value is None or len(value) == 0 else value[0]

    def many(name: str, kind: type) -> tuple[Any, ...]:
        value = values.get(name)
        return () if value is None else tuple(kind(v) for v in value.tolist())

    text = first("text_output")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    params = result.get_response().parameters
    final = "triton_final_response" in params and params["triton_final_response"].bool_param
    prompt_tokens, completion_tokens = first("prompt_tokens"), first("completion_tokens")
    reason = first("finish_reason")
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", errors="replace")
    index = first("sequence_index")
    return Delta(
        text="" if text is None else str(text),
        final=bool(final),
        prompt_tokens=None if prompt_tokens is None else int(prompt_tokens),
        completion_tokens=None if completion_tokens is None else int(completion_tokens),
        finish_reason=str(reason) if reason else None,
        sequence_index=0 if index is None else int(index),
        token_ids=many("output_token_ids", int),
        log_probs=many("output_log_probs", float),
        top_token_ids=many("output_top_token_ids", int),
        top_log_probs=many("output_top_log_probs", float),
        prompt_token_ids=many("prompt_token_ids", int),
        prompt_log_probs=many("prompt_log_probs", float),
    )
