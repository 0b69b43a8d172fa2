"""Per-sequence sampling settings and the token choice from one logits row (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contract import EngineError


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence generation settings. temperature 0 means greedy; top_k 0 and top_p 1 mean off."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise EngineError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise EngineError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise EngineError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise EngineError(f"top_k must be >= 0, got {self.top_k}")


class Sampler:
    """Per-sequence token choice from one logits row (numpy only)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """The next token from one logits row; `ValueError` if the row holds NaN or +inf (a broken model
        call), so that one sequence fails rather than emitting an arbitrary token."""
        params = self.params
        if params.temperature == 0.0 or params.top_k == 1:
            best = int(np.argmax(logits))  # argmax stops at the first NaN; +inf wins: either is caught
            if not np.isfinite(logits[best]):
                raise ValueError("the model returned non-finite logits (NaN or inf)")
            return best
        scaled = logits.astype(np.float64) / params.temperature
        if not np.isfinite(scaled.max()):
            raise ValueError("the model returned non-finite logits (NaN or inf)")
        kept: np.ndarray | None = None  # the top_k token ids, when top_k narrows the choice
        if 0 < params.top_k < scaled.shape[0]:
            kept = np.argpartition(scaled, -params.top_k)[-params.top_k :]
            scaled = scaled[kept]
        scaled = scaled - scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        if params.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = int(np.searchsorted(cumulative, params.top_p)) + 1
            order = order[:keep]
            nucleus = probs[order] / probs[order].sum()
            choice = int(order[self.rng.choice(len(order), p=nucleus)])
        else:
            choice = int(self.rng.choice(probs.shape[0], p=probs))
        return int(kept[choice]) if kept is not None else choice
