"""Each token id's exact bytes, for a byte-level BPE (GPT-2 alphabet) or a SentencePiece-style (▁, <0xNN>)
tokenizer. A token may hold part of a UTF-8 character; its bytes say which part, where its decoded text
can only say U+FFFD. The engine's detokeniser uses them to tell a character cut by the end of an answer
(dropped) from bytes that are not UTF-8 at all (kept as U+FFFD); the gateway uses them for OpenAI's
logprobs `bytes` and `token`."""

from __future__ import annotations

import functools
import json
import re
import weakref
from collections.abc import Iterable
from typing import Any

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
    """Token ids to their bytes, for one `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
        self.byte_level = _has_type(decoder, "ByteLevel")
        self.specials = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (one TokenBytes per tokenizer, kept for its lifetime)
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

    def ends_inside_a_character(self, ids: Iterable[int], skip_special_tokens: bool = True) -> bool:
        """Whether the bytes of `ids` (as decoded: skipped special tokens left out) end with the start of
        a UTF-8 character whose remaining bytes never came (as opposed to ending with whole characters
        or with bytes that no continuation could make UTF-8)."""
        raw = b"".join(self.of(i) for i in ids if not (skip_special_tokens and i in self.specials))
        return cut_character(raw)


_LENGTH_BY_LEAD = {0xC: 2, 0xD: 2, 0xE: 3, 0xF: 4}  # a lead byte's high nibble: its character's length


def cut_character(raw: bytes) -> bool:
    """Whether `raw` ends with the first 1-3 bytes of a UTF-8 character that more bytes could complete.
    (Stricter than Python's incremental decoder, which also holds back e.g. b"\\xed\\xa8", the start of
    a surrogate that no continuation makes UTF-8.)"""
    for n in (1, 2, 3):
        tail = raw[-n:]
        if len(tail) < n:
            return False
        if 0x80 <= tail[0] < 0xC0:  # a continuation byte: the character may start further back
            continue
        need = _LENGTH_BY_LEAD[tail[0] >> 4] if 0xC2 <= tail[0] < 0xF5 else 0  # else: never a lead byte
        return n < need and any(
            _utf8(tail + bytes([b]) + b"\x80" * (need - n - 1)) for b in range(0x80, 0xC0)
        )
    return False


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_CACHE: weakref.WeakKeyDictionary[Any, TokenBytes] = weakref.WeakKeyDictionary()


def token_bytes(tokenizer: Any) -> TokenBytes:
    """The TokenBytes of `tokenizer`, built once per tokenizer (reading its JSON is not free)."""
    found = _CACHE.get(tokenizer)
    if found is None:
        found = _CACHE[tokenizer] = TokenBytes(tokenizer)
    return found


def _has_type(node: Any, name: str) -> bool:
    if isinstance(node, dict):
        return node.get("type") == name or any(_has_type(v, name) for v in node.values())
    if isinstance(node, list):
        return any(_has_type(v, name) for v in node)
    return False
