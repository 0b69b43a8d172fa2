"""Constrained decoding with llguidance: a token mask per step, per sequence (structured output, tools).

A guide is a (type, text) pair as the request names it (spec.py, `guided_decoding_guide_type` /
`guided_decoding_guide`):

    json         any JSON object (OpenAI's `response_format: json_object`); the text is ignored
    json_schema  a JSON schema (OpenAI's `json_schema`): the output parses and validates against it
    regex        a regular expression the whole output matches
    lark         a grammar in llguidance's Lark syntax, which may embed a JSON schema as a rule with
                 `%json { ... }` (what tool calls need)

`GuideCompiler` (one per engine: it holds llguidance's view of the vocabulary, built once on first
use, ~1-2 s) checks a guide and makes a `Guide` for each sequence: its own grammar state, which
gives the mask of allowed next tokens and consumes the token chosen. JSON is generated compactly
(no free whitespace between tokens, so a weak model cannot wander in blanks) unless the schema's
own `x-guidance` options say otherwise.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .contract import EngineError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

JSON_DEFAULTS: JsonCompileOptions = {"whitespace_flexible": False}
GRAMMAR_CACHE = 64  # compiled guides kept (a gateway sends the same tool/schema grammar again and again)


class GuideCompiler:
    """Checks guides and makes per-sequence `Guide`s over one tokenizer's vocabulary (thread-safe)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        """`tokenizer`: the model's `tokenizers.Tokenizer` (its JSON form is what llguidance reads)."""
        self._source = tokenizer
        self.vocab_size = vocab_size
        self._eos = [int(t) for t in eos_token_ids]
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self.mask_seconds = 0.0  # time spent computing masks, over every guide made here
        self.masks = 0  # masks computed
        self._cached = functools.lru_cache(maxsize=GRAMMAR_CACHE)(self._checked_grammar)

    @property
    def tokenizer(self) -> Any:
        """llguidance's tokenizer over the model's vocabulary (made on first use)."""
        with self._lock:
            if self._tokenizer is None:
                import llguidance

                self._tokenizer = llguidance.LLTokenizer(
                    self._source.to_str(), n_vocab=self.vocab_size, eos_token=self._eos or None
                )
            return self._tokenizer

    def grammar(self, guide_type: str, guide: str) -> str:
        """llguidance's grammar for a guide; `EngineError` naming the problem if it is invalid."""
        return self._cached(guide_type, guide)

    def guide(self, guide_type: str, guide: str) -> Guide:
        """A fresh grammar state for one sequence."""
        import llguidance

        matcher = llguidance.LLMatcher(self.tokenizer, self.grammar(guide_type, guide), log_level=0)
        if matcher.is_error():
            raise EngineError(f"guided decoding ({guide_type}): {matcher.get_error()}")
        return Guide(matcher, self)

    def note_mask(self, seconds: float) -> None:
        """Add one mask computation to the counters (read by benchmarks and logs)."""
        self.mask_seconds += seconds
        self.masks += 1

    def _checked_grammar(self, guide_type: str, guide: str) -> str:
        return _compile(self.tokenizer, guide_type, guide)


def _compile(tokenizer: Any, guide_type: str, guide: str) -> str:
    import llguidance

    if guide_type == "json":
        grammar = llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_DEFAULTS)
    elif guide_type == "json_schema":
        try:
            schema = json.loads(guide)
        except json.JSONDecodeError as exc:
            raise EngineError(f"guided decoding (json_schema): the schema is not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise EngineError("guided decoding (json_schema): the schema must be a JSON object")
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
    elif guide_type == "regex":
        grammar = llguidance.LLMatcher.grammar_from_regex(guide)
    elif guide_type == "lark":
        grammar = llguidance.LLMatcher.grammar_from_lark(guide)
    else:
        raise EngineError(f"guided decoding type {guide_type!r}: use json, json_schema, regex or lark")
    if guide_type != "json" and not guide.strip():
        raise EngineError(f"guided decoding ({guide_type}): the guide is empty")
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise EngineError(f"guided decoding ({guide_type}): invalid guide: {messages[0].strip()}")
    return str(grammar)


class Guide:
    """One sequence's grammar state: the mask of allowed next tokens, and the tokens consumed."""

    def __init__(self, matcher: Any, compiler: GuideCompiler) -> None:
        self.matcher = matcher
        self.compiler = compiler
        words = (compiler.vocab_size + 31) // 32
        self._bits = np.zeros(words, dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """bool [vocab_size]: the tokens the grammar allows next (EOS when it is complete)."""
        start = time.perf_counter()
        self.matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        mask = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self.compiler.vocab_size]
        self.compiler.note_mask(time.perf_counter() - start)
        return mask.astype(bool)

    def consume(self, token_id: int) -> None:
        """Advance the grammar by the chosen token; `ValueError` if the grammar refused it."""
        if not self.matcher.consume_token(int(token_id)):
            raise ValueError(f"the grammar refused token {token_id}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """Whether the grammar is complete and allows nothing more (the sequence ends: 'stop')."""
        return bool(self.matcher.is_stopped())

    def fork(self) -> Guide:
        """An independent copy of this state (a sequence of `n` goes on alone)."""
        return Guide(self.matcher.deep_copy(), self.compiler)
