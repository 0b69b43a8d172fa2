"""Per-sequence sampling settings and the token choice from one logits row (numpy only).

Order of operations for one sequence's next token (what `DecodeBatch.step` does):
    raw logits -> logit_bias, repetition/frequency/presence penalties (`logits.apply_processors`)
               = the "processed" logits; logprobs are their log-softmax
               -> grammar mask (`guide.py`) -> temperature -> top_k -> min_p -> top_p -> draw (`Sampler`)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contract import EngineError

MAX_TOP_LOGPROBS = 20
GUIDE_TYPES = ("json", "json_schema", "regex", "lark")


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence generation settings. temperature 0 means greedy; top_k 0, top_p 1, min_p 0, the
    penalties 0 and repetition_penalty 1 mean off.

    frequency_penalty / presence_penalty: OpenAI's meaning, over the tokens generated so far (a token's
    logit loses count*frequency_penalty, and presence_penalty once it appeared). repetition_penalty:
    Hugging Face's (CTRL) meaning over prompt and generated tokens: a seen token's positive logit is
    divided by it, a negative one multiplied. logit_bias: (token id, bias) pairs added to the logits.
    logprobs / top_logprobs: report each chosen token's logprob and the k best alternatives.
    guide_type / guide: constrained decoding ("json", "json_schema", "regex", "lark"; see guide.py).
    """

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    guide_type: str = ""
    guide: str = ""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise EngineError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise EngineError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise EngineError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise EngineError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise EngineError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise EngineError(f"{name} must be between -2 and 2, got {value}")
        if not (self.repetition_penalty > 0.0 and np.isfinite(self.repetition_penalty)):
            raise EngineError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        for token, bias in self.logit_bias:
            if not -100.0 <= bias <= 100.0:
                raise EngineError(f"logit_bias for token {token}: {bias} is not between -100 and 100")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise EngineError(
                f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.top_logprobs}"
            )
        if self.guide_type and self.guide_type not in GUIDE_TYPES:
            raise EngineError(
                f"guided decoding type {self.guide_type!r}: use one of {', '.join(GUIDE_TYPES)}"
            )
        if self.guide and not self.guide_type:
            raise EngineError("a guided decoding guide needs its type (json, json_schema, regex or lark)")

    @property
    def penalised(self) -> bool:
        """Whether any of the three penalties is on (the batch then keeps this sequence's token counts)."""
        return bool(self.frequency_penalty or self.presence_penalty or self.repetition_penalty != 1.0)

    @property
    def wants_logprobs(self) -> bool:
        """Whether each chosen token's logprob (and maybe alternatives) must be computed."""
        return self.logprobs or self.top_logprobs > 0


class Sampler:
    """Per-sequence token choice from one (processed) logits row; its own seeded RNG, so the same seed
    and the same logits give the same tokens whatever else is batched with the sequence."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> int:
        """The next token from one logits row; `allowed` (bool [V]), when given, is the grammar's mask.
        `ValueError` if the row holds NaN or +inf (a broken model call), so that one sequence fails
        rather than emitting an arbitrary token."""
        params = self.params
        if allowed is not None:
            if not allowed.any():
                raise ValueError("the grammar allows no token here")
            logits = np.where(allowed, logits, -np.inf)
            if np.isnan(logits).any():
                raise ValueError("the model returned non-finite logits (NaN or inf)")
        if params.temperature == 0.0 or params.top_k == 1:
            best = int(np.argmax(logits))  # argmax stops at the first NaN; +inf wins: either is caught
            if not np.isfinite(logits[best]):
                raise ValueError("the model returned non-finite logits (NaN or inf)")
            return best
        scaled = logits.astype(np.float64) / params.temperature
        if not np.isfinite(scaled.max()):
            raise ValueError("the model returned non-finite logits (NaN or inf)")
        kept: np.ndarray | None = None  # the token ids still candidates, when a filter narrowed them
        if 0 < params.top_k < scaled.shape[0]:
            kept = np.argpartition(scaled, -params.top_k)[-params.top_k :]
            scaled = scaled[kept]
        scaled = scaled - scaled.max()
        probs = np.exp(scaled)
        if params.min_p > 0.0:
            # min_p: keep tokens at least min_p times as likely as the most likely one (max prob is 1 here)
            keep = np.flatnonzero(probs >= params.min_p)
            kept = keep if kept is None else kept[keep]
            probs = probs[keep]
        probs /= probs.sum()
        if params.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            cut = int(np.searchsorted(cumulative, params.top_p)) + 1
            order = order[:cut]
            nucleus = probs[order] / probs[order].sum()
            choice = int(order[self.rng.choice(len(order), p=nucleus)])
        else:
            choice = int(self.rng.choice(probs.shape[0], p=probs))
        return int(kept[choice]) if kept is not None else choice
