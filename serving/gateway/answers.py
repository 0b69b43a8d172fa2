"""A finished generation as OpenAI's response, or its deltas as OpenAI's stream chunks.

Chat: n choices, each with its content or its tool calls (`finish_reason` "tool_calls"), and with
`logprobs.content` when asked. Streamed: a role chunk per choice, then content / tool-call deltas
(serving/gateway/tools.py's CallStream) with the logprobs of the tokens behind them, a finish chunk per
choice as soon as its sequence ends, and the usage chunk when `stream_options.include_usage`.
Completions: n choices of text (with the prompt first when `echo`) and OpenAI's completions logprobs.

A stream's deltas are turned into chunks in order as they arrive, from the deltas themselves: the
generation's own record runs ahead of the client.
"""

from __future__ import annotations

import time
from typing import Any

from model_repo.runtime.token_bytes import TokenBytes
from serving.gateway.compat import ChatPlan, CompletionPlan
from serving.gateway.generation import Generation
from serving.gateway.logprobs import (
    CompletionLogprobs,
    TokenRecord,
    chat_logprobs,
    completion_logprobs,
)
from serving.gateway.responses import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionResponse,
    dump,
)
from serving.gateway.tools import CallStream, parse_calls
from serving.gateway.triton import Delta

_REASONS = ("stop", "length")


def dump_optional(value: Any) -> Any:
    return None if value is None else dump(value)


def _record(delta: Delta) -> TokenRecord:
    record = TokenRecord()
    record.add(delta.token_ids, delta.log_probs, delta.top_token_ids, delta.top_log_probs)
    return record


class ChatAnswer:
    """`/v1/chat/completions`: the response, or the stream's chunks."""

    def __init__(self, gen: Generation, names: TokenBytes, model: str, answer_id: str) -> None:
        assert isinstance(gen.plan, ChatPlan)
        self.gen, self.plan, self.names, self.model, self.id = gen, gen.plan, names, model, answer_id
        self.created = int(time.time())
        self.streams = {i: CallStream() for i in range(gen.params.n)}
        self.finished: set[int] = set()

    # -- one response ----------------------------------------------------------------------------
    def response(self) -> ChatCompletionResponse:
        assert self.gen.usage is not None
        choices = []
        for index in range(self.gen.params.n):
            choice = self.gen.choice(index)
            text: str | None = "".join(choice.text)
            calls = None
            if self.plan.tools.parses_calls:
                text, found = parse_calls(text or "")
                calls = found or None
            reason = choice.finish_reason
            if calls and reason == "stop":
                reason = "tool_calls"
            logprobs = (
                chat_logprobs(choice.record, self.names, self.plan.top_logprobs)
                if self.plan.logprobs
                else None
            )
            choices.append(
                ChatChoice(
                    index=index,
                    message=AssistantMessage(content=text, tool_calls=calls),
                    finish_reason=reason,  # type: ignore[arg-type]
                    logprobs=logprobs,
                )
            )
        return ChatCompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=self.gen.usage
        )

    # -- a stream --------------------------------------------------------------------------------
    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }

    def _choice(
        self, index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> dict[str, Any]:
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}

    def first(self) -> list[dict[str, Any]]:
        return [
            self._chunk([self._choice(i, {"role": "assistant", "content": ""})])
            for i in range(self.gen.params.n)
        ]

    def delta(self, delta: Delta) -> list[dict[str, Any]]:
        index = delta.sequence_index
        if index in self.finished:
            return []
        if self.plan.tools.parses_calls:
            pieces = list(self.streams[index].push(delta.text))
        else:
            pieces = [{"content": delta.text}] if delta.text else []
        logprobs = None
        if self.plan.logprobs and delta.token_ids:
            logprobs = dump(chat_logprobs(_record(delta), self.names, self.plan.top_logprobs))
        chunks = []
        for i, piece in enumerate(pieces):
            chunks.append(self._chunk([self._choice(index, piece, logprobs=logprobs if i == 0 else None)]))
        if logprobs is not None and not pieces:
            chunks.append(self._chunk([self._choice(index, {}, logprobs=logprobs)]))
        if delta.finish_reason in _REASONS:
            chunks += self._finish_choice(index, delta.finish_reason)
        return chunks

    def _finish_choice(self, index: int, reason: str | None) -> list[dict[str, Any]]:
        self.finished.add(index)
        stream = self.streams[index]
        chunks = [self._chunk([self._choice(index, piece)]) for piece in stream.finish()]
        if stream.calls and reason == "stop":
            reason = "tool_calls"
        chunks.append(self._chunk([self._choice(index, {}, reason)]))
        return chunks

    def finish(self, include_usage: bool) -> list[dict[str, Any]]:
        chunks = []
        for index in range(self.gen.params.n):
            if index not in self.finished:
                chunks += self._finish_choice(index, self.gen.choice(index).finish_reason)
        if include_usage and self.gen.usage is not None:
            chunks.append(self._chunk([], usage=self.gen.usage.model_dump()))
        return chunks


class CompletionAnswer:
    """`/v1/completions`: the response, or the stream's chunks."""

    def __init__(self, gen: Generation, names: TokenBytes, model: str, answer_id: str) -> None:
        assert isinstance(gen.plan, CompletionPlan) and gen.prompt is not None
        self.gen, self.plan, self.names, self.model, self.id = gen, gen.plan, names, model, answer_id
        self.created = int(time.time())
        self.echo = gen.prompt.text if self.plan.echo else ""
        self.offsets = {i: len(self.echo) for i in range(gen.params.n)}
        self.finished: set[int] = set()
        self.echoed: set[int] = set()

    def _logprobs(
        self, record: TokenRecord, offset: int, prompt: TokenRecord | None = None
    ) -> CompletionLogprobs | None:
        """Logprobs of `record` (text starting at `offset`), after the prompt's when `prompt` is given."""
        if self.plan.logprobs is None:
            return None
        generated = completion_logprobs(record, self.names, self.plan.logprobs, offset)
        if prompt is None:
            return generated
        before = completion_logprobs(prompt, self.names, self.plan.logprobs, 0, first_is_null=True)
        return CompletionLogprobs(
            tokens=before.tokens + generated.tokens,
            token_logprobs=before.token_logprobs + generated.token_logprobs,
            top_logprobs=before.top_logprobs + generated.top_logprobs,
            text_offset=before.text_offset + generated.text_offset,
        )

    def response(self) -> CompletionResponse:
        choices = []
        for index in range(self.gen.params.n):
            choice = self.gen.choice(index)
            choices.append(
                CompletionChoice(
                    index=index,
                    text=self.echo + "".join(choice.text),
                    finish_reason=choice.finish_reason,  # type: ignore[arg-type]
                    logprobs=self._logprobs(
                        choice.record, len(self.echo), self.gen.prompt_record if self.echo else None
                    ),
                )
            )
        return CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=self.gen.usage
        )

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }

    def _choice(
        self, index: int, text: str, finish: str | None = None, logprobs: Any = None
    ) -> dict[str, Any]:
        return {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}

    def first(self) -> list[dict[str, Any]]:
        return []  # completions have no role chunk; an echoed prompt comes with the first delta

    def delta(self, delta: Delta) -> list[dict[str, Any]]:
        index = delta.sequence_index
        if index in self.finished:
            return []
        prefix, prompt = "", None
        if self.echo and index not in self.echoed:
            self.echoed.add(index)
            prefix = self.echo
            if delta.prompt_token_ids:
                prompt = TokenRecord()
                prompt.add(delta.prompt_token_ids, delta.prompt_log_probs, (), ())
            else:
                prompt = self.gen.prompt_record
        logprobs = None
        if self.plan.logprobs is not None and (delta.token_ids or prompt is not None):
            logprobs = dump_optional(self._logprobs(_record(delta), self.offsets[index], prompt))
        self.offsets[index] += len(delta.text)
        text = prefix + delta.text
        chunks = []
        if text or logprobs is not None:
            chunks.append(self._chunk([self._choice(index, text, logprobs=logprobs)]))
        if delta.finish_reason in _REASONS:
            self.finished.add(index)
            chunks.append(self._chunk([self._choice(index, "", delta.finish_reason)]))
        return chunks

    def finish(self, include_usage: bool) -> list[dict[str, Any]]:
        chunks = []
        for index in range(self.gen.params.n):
            if index not in self.finished:
                self.finished.add(index)
                chunks.append(self._chunk([self._choice(index, "", self.gen.choice(index).finish_reason)]))
        if include_usage and self.gen.usage is not None:
            chunks.append(self._chunk([], usage=self.gen.usage.model_dump()))
        return chunks
