"""Logits processing (model_repo/runtime/logits.py): logit_bias and the three penalties change exactly the
logits their definitions name, per row of a batch, and logprobs are the log-softmax of the result."""

from __future__ import annotations

import numpy as np
import pytest

from model_repo.runtime.logits import RowSettings, TokenHistory, apply_processors, log_softmax, token_logprobs
from model_repo.runtime.sampling import SamplingParams

V = 8


def _row(params: SamplingParams, prompt: list[int], generated: list[int]) -> RowSettings | None:
    row = RowSettings.of(params, prompt, V)
    if row is not None and row.history is not None:
        for token in generated:
            row.history.add(token)
    return row


def test_rows_without_settings_are_not_copied_or_changed() -> None:
    """The plain path costs nothing: no settings on any row returns the very same array."""
    logits = np.arange(2 * V, dtype=np.float32).reshape(2, V)
    assert RowSettings.of(SamplingParams(), [1, 2], V) is None
    assert apply_processors(logits, [None, None]) is logits


def test_logit_bias_adds_to_the_named_tokens_of_its_own_row_only() -> None:
    logits = np.zeros((2, V), dtype=np.float32)
    biased = _row(SamplingParams(logit_bias=((3, 5.0), (6, -100.0))), [0], [])
    out = apply_processors(logits, [biased, None])
    expected = np.zeros(V, dtype=np.float32)
    expected[3], expected[6] = 5.0, -100.0
    assert np.array_equal(out[0], expected) and np.array_equal(out[1], np.zeros(V))
    assert np.array_equal(logits, np.zeros((2, V)))  # the input is left as it was


def test_frequency_and_presence_penalties_follow_openai_over_generated_tokens() -> None:
    """logit[t] -= count[t] * frequency + (count[t] > 0) * presence; prompt tokens do not count."""
    logits = np.full((1, V), 1.0, dtype=np.float32)
    row = _row(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), [7, 7], [2, 2, 2, 4])
    out = apply_processors(logits, [row])[0]
    expected = np.full(V, 1.0)
    expected[2] = 1.0 - 3 * 0.5 - 0.25
    expected[4] = 1.0 - 1 * 0.5 - 0.25
    assert np.allclose(out, expected)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    """Hugging Face/CTRL: over prompt and generated tokens; unseen tokens keep their logits."""
    logits = np.asarray([[2.0, -2.0, 2.0, -2.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    row = _row(SamplingParams(repetition_penalty=2.0), [0, 1], [2])
    out = apply_processors(logits, [row])[0]
    assert np.allclose(out, [1.0, -4.0, 1.0, -2.0, 1.0, 1.0, 1.0, 1.0])


def test_each_row_of_a_batch_gets_its_own_settings() -> None:
    logits = np.zeros((3, V), dtype=np.float32)
    rows = [
        _row(SamplingParams(frequency_penalty=1.0), [0], [5]),
        None,
        _row(SamplingParams(presence_penalty=2.0, logit_bias=((1, 3.0),)), [0], [5, 5]),
    ]
    out = apply_processors(logits, rows)
    assert out[0, 5] == -1.0 and out[0].sum() == -1.0
    assert not out[1].any()
    assert out[2, 5] == -2.0 and out[2, 1] == 3.0 and out[2].sum() == 1.0


def test_a_forked_history_counts_on_its_own() -> None:
    history = TokenHistory(SamplingParams(frequency_penalty=1.0), [0], V)
    history.add(3)
    copy = history.copy()
    copy.add(3)
    assert history.counts[3] == 1 and copy.counts[3] == 2


def test_token_logprobs_are_the_log_softmax_with_the_best_alternatives_first() -> None:
    row = np.asarray([0.0, 3.0, 1.0, 2.0, -1.0, 0.5, 0.0, 0.0], dtype=np.float32)
    expected = row - np.log(np.exp(row).sum())
    assert np.allclose(log_softmax(row), expected)
    logprob, top_ids, top_lps = token_logprobs(row, 2, 3)
    assert logprob == pytest.approx(expected[2])
    assert top_ids == (1, 3, 2) and np.allclose(top_lps, expected[[1, 3, 2]])
    assert token_logprobs(row, 2, 0)[1:] == ((), ())
