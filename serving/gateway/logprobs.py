"""Token ids and logprobs (from Triton) as OpenAI's logprobs objects.

Triton returns ids (`output_token_ids`, `output_top_token_ids`); the gateway has the tokenizer, so it
turns each id into OpenAI's `token` (its text) and `bytes` (its UTF-8 bytes). A byte-level BPE token
may hold part of a character: its `bytes` are exact and its `token` is written `bytes:\\xe4\\xb8` as
OpenAI does, so that joining the `bytes` of all tokens gives exactly the text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from model_repo.runtime.token_bytes import TokenBytes
from serving.gateway.responses import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob


def _finite(value: float) -> float:
    """A logprob JSON can carry (-inf, from a token masked out, becomes a very small number)."""
    return float(value) if math.isfinite(value) else -9999.0


class TokenRecord:
    """The tokens behind one choice with their logprobs and alternatives, accumulated over a stream."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.top: list[list[tuple[int, float]]] = []

    def add(
        self,
        ids: Sequence[int],
        logprobs: Sequence[float],
        top_ids: Sequence[int],
        top_logprobs: Sequence[float],
    ) -> tuple[int, int]:
        """Append one response's tokens; returns the range of entries it added."""
        start = len(self.ids)
        k = len(top_ids) // len(ids) if ids else 0
        for i, token in enumerate(ids):
            self.ids.append(int(token))
            self.logprobs.append(float(logprobs[i]) if i < len(logprobs) else math.nan)
            self.top.append(
                [(int(top_ids[i * k + j]), float(top_logprobs[i * k + j])) for j in range(k)] if k else []
            )
        return start, len(self.ids)


def chat_logprobs(
    record: TokenRecord, names: TokenBytes, top: int, span: tuple[int, int] | None = None
) -> ChatLogprobs:
    """Chat's `logprobs.content` for the entries in `span` (all by default)."""
    start, end = span or (0, len(record.ids))
    content = []
    for i in range(start, end):
        token = record.ids[i]
        content.append(
            TokenLogprob(
                token=names.text(token),
                logprob=_finite(record.logprobs[i]),
                bytes=list(names.of(token)),
                top_logprobs=[
                    TopLogprob(token=names.text(t), logprob=_finite(lp), bytes=list(names.of(t)))
                    for t, lp in record.top[i][:top]
                ],
            )
        )
    return ChatLogprobs(content=content)


def completion_logprobs(
    record: TokenRecord,
    names: TokenBytes,
    top: int,
    offset: int,
    span: tuple[int, int] | None = None,
    first_is_null: bool = False,
) -> CompletionLogprobs:
    """Completions' `logprobs` for the entries in `span`; `offset` is the text offset of the first one.
    `first_is_null`: the first entry is the prompt's first token (no logprob, as OpenAI's echo)."""
    start, end = span or (0, len(record.ids))
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    position = offset
    for i in range(start, end):
        token = record.ids[i]
        tokens.append(names.text(token))
        offsets.append(position)
        position += len(names.of(token).decode("utf-8", errors="ignore"))
        null = (first_is_null and i == start) or math.isnan(record.logprobs[i])
        token_logprobs.append(None if null else _finite(record.logprobs[i]))
        if null:
            tops.append(None)
        else:
            alternatives: dict[str, float] = {}
            for t, lp in record.top[i][:top]:
                alternatives.setdefault(names.text(t), _finite(lp))
            tops.append(alternatives)
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=token_logprobs, top_logprobs=tops, text_offset=offsets
    )
