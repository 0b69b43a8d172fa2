"""Token ids to text for streaming: deltas that never split a UTF-8 character, cut at stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .token_bytes import token_bytes


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never end inside a UTF-8 character.

    Byte-level BPE tokens can hold part of a multi-byte character; such a tail decodes to U+FFFD and is
    held back until the next token completes it.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=self.skip))

    def push(self, token_id: int) -> str:
        """The text `token_id` completes ('' while it ends inside a character)."""
        self.ids.append(int(token_id))
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            # Keep a short window of context so word-boundary spaces decode correctly.
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back. An incomplete character at the very end (the answer was cut
        inside it, e.g. by max_tokens) is dropped: it would only decode to U+FFFD. Bytes that are not
        UTF-8 at all stay U+FFFD, as they are anywhere else in the text."""
        tail = self.ids[self.prefix_offset :]
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(tail)
        self.prefix_offset = self.read_offset = len(self.ids)
        text = full[len(prefix) :]
        if text.endswith("\ufffd") and token_bytes(self.tokenizer).ends_inside_a_character(tail, self.skip):
            text = text[:-1]
        return text


class TextStream:
    """Detokenizer plus stop strings: `push` returns text safe to send; once a stop string appears,
    `stopped` is True and the text up to (not including) it has been returned."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), skip_special_tokens: bool = True) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, skip_special_tokens)
        self.stop = tuple(s for s in stop if s)
        self.pending = ""
        self.stopped = False
        self._hold = max((len(s) for s in self.stop), default=1) - 1

    def push(self, token_id: int) -> str:
        """Text safe to send after `token_id` ('' once stopped, or while a stop string may be starting)."""
        if self.stopped:
            return ""
        return self._release(self.pending + self.detok.push(token_id), final=False)

    def flush(self) -> str:
        """Whatever is still held back, at the end of the sequence (up to a stop string, if one appears)."""
        if self.stopped:
            return ""
        return self._release(self.pending + self.detok.flush(), final=True)

    def _release(self, text: str, final: bool) -> str:
        if self.stop:
            hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
            if hits:
                self.stopped, self.pending = True, ""
                return text[: min(hits)]
            if not final and self._hold:
                # Hold back a tail that could be the start of a stop string.
                cut = len(text)
                for k in range(1, min(self._hold, len(text)) + 1):
                    if any(s.startswith(text[-k:]) for s in self.stop):
                        cut = len(text) - k
                self.pending = text[cut:]
                return text[:cut]
        self.pending = ""
        return text
