"""Logits processing for a continuous batch, vectorised over the rows that need it (numpy only).

Each sequence may carry its own logit_bias and penalties (see `SamplingParams`). One decode step
processes the batch's logits [B, V] at once: rows without any setting are left untouched and, when
no row has one, nothing is copied at all (the plain path costs nothing). Logprobs are the log-softmax
of the processed logits, computed only for rows that asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .sampling import SamplingParams


class TokenHistory:
    """What the penalties need from one sequence: how often each token was generated (frequency and
    presence penalties) and which tokens appeared in prompt or answer (repetition penalty)."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], vocab_size: int) -> None:
        self.frequency = float(params.frequency_penalty)
        self.presence = float(params.presence_penalty)
        self.repetition = float(params.repetition_penalty)
        self.counts = np.zeros(vocab_size, dtype=np.float32)
        self.seen = np.zeros(vocab_size, dtype=bool)
        if self.repetition != 1.0:
            self.seen[np.asarray(prompt_ids, dtype=np.int64)] = True

    def add(self, token_id: int) -> None:
        """Note a generated token."""
        self.counts[token_id] += 1.0
        self.seen[token_id] = True

    def copy(self) -> TokenHistory:
        """An independent copy (a forked sequence of `n` continues on its own)."""
        other = object.__new__(TokenHistory)
        other.frequency, other.presence, other.repetition = self.frequency, self.presence, self.repetition
        other.counts, other.seen = self.counts.copy(), self.seen.copy()
        return other


@dataclass(frozen=True)
class RowSettings:
    """One batch row's processing: its bias as arrays, its penalty history (None: no penalty)."""

    bias_ids: np.ndarray | None = None
    bias_values: np.ndarray | None = None
    history: TokenHistory | None = None

    @classmethod
    def of(cls, params: SamplingParams, prompt_ids: Sequence[int], vocab_size: int) -> RowSettings | None:
        """The settings for `params`, or None when the row needs no processing at all."""
        history = TokenHistory(params, prompt_ids, vocab_size) if params.penalised else None
        if not params.logit_bias and history is None:
            return None
        ids = np.asarray([t for t, _ in params.logit_bias], dtype=np.int64) if params.logit_bias else None
        values = (
            np.asarray([b for _, b in params.logit_bias], dtype=np.float32) if params.logit_bias else None
        )
        return cls(ids, values, history)

    def forked(self) -> RowSettings:
        """The same settings with an independent history."""
        return RowSettings(self.bias_ids, self.bias_values, self.history.copy() if self.history else None)


def apply_processors(logits: np.ndarray, rows: Sequence[RowSettings | None]) -> np.ndarray:
    """The processed logits [B, V] for `logits` [B, V]: bias then penalties, for every row whose
    settings are not None. Returns `logits` itself when no row needs anything (no copy)."""
    active = [(i, r) for i, r in enumerate(rows) if r is not None]
    if not active:
        return logits
    out = np.array(logits, dtype=np.float32, copy=True)
    for i, row in active:
        if row.bias_ids is not None and row.bias_values is not None:
            np.add.at(out[i], row.bias_ids, row.bias_values)
    penalised = [(i, row.history) for i, row in active if row.history is not None]
    if penalised:
        idx = np.asarray([i for i, _ in penalised])
        histories = [h for _, h in penalised]
        sub = out[idx]
        repetition = np.asarray([h.repetition for h in histories], dtype=np.float32)
        if (repetition != 1.0).any():
            seen = np.stack([h.seen for h in histories])
            factor = repetition[:, None]
            sub = np.where(seen, np.where(sub > 0, sub / factor, sub * factor), sub)
        frequency = np.asarray([h.frequency for h in histories], dtype=np.float32)
        presence = np.asarray([h.presence for h in histories], dtype=np.float32)
        if frequency.any() or presence.any():
            counts = np.stack([h.counts for h in histories])
            sub = sub - frequency[:, None] * counts - presence[:, None] * (counts > 0)
        out[idx] = sub
    return out


def log_softmax(row: np.ndarray) -> np.ndarray:
    """log-softmax of one logits row, in float64 for stable small values."""
    x = row.astype(np.float64)
    top = x.max()
    return x - top - np.log(np.exp(x - top).sum())


def token_logprobs(
    row: np.ndarray, token_id: int, top: int
) -> tuple[float, tuple[int, ...], tuple[float, ...]]:
    """(logprob of `token_id`, the `top` most likely token ids best first, their logprobs) for one
    processed logits row."""
    logp = log_softmax(row)
    if top <= 0:
        return float(logp[token_id]), (), ()
    best = np.argpartition(logp, -top)[-top:]
    best = best[np.argsort(-logp[best], kind="stable")]
    return float(logp[token_id]), tuple(int(t) for t in best), tuple(float(logp[t]) for t in best)
