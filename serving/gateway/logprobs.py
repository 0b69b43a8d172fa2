"""Token ids and logprobs (from Triton) as OpenAI's logprobs objects.

Triton returns ids (`output_token_ids`, `output_top_token_ids`); the gateway has the tokenizer, so it
turns each id into OpenAI's `token` (its text) and `bytes` (its UTF-8 bytes). A byte-level BPE token
may hold part of a character: its `bytes` are exact and its `token` is written `bytes:\\xe4\\xb8` as
OpenAI does, so that joining the `bytes` of all tokens gives exactly the text.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from serving.gateway.responses import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = 0
    table: dict[str, int] = {}
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


class TokenBytes:
    """Each token id's bytes, for a byte-level BPE or a SentencePiece-style (▁, <0xNN>) tokenizer."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
        self.byte_level = _has_type(decoder, "ByteLevel")
        self.specials = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (one TokenBytes per gateway, kept for its lifetime)
    def of(self, token_id: int) -> bytes:
        if token_id in self.specials:
            return self.specials[token_id].encode("utf-8")
        piece = self.tokenizer.id_to_token(int(token_id))
        if piece is None:
            return b""
        if self.byte_level:
            alphabet = _byte_level_alphabet()
            if all(ch in alphabet for ch in piece):
                return bytes(alphabet[ch] for ch in piece)
            return piece.encode("utf-8")  # an added (non-byte-level) token
        match = _BYTE_TOKEN.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def text(self, token_id: int) -> str:
        """OpenAI's `token`: the text, or `bytes:\\x..` when the token is not whole UTF-8."""
        raw = self.of(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _has_type(node: Any, name: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == name or any(_has_type(v, name) for v in node.values())
    if isinstance(node, list):
        return any(_has_type(v, name) for v in node)
    return False


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
