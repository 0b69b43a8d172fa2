"""Sampling settings and the per-sequence token choice."""

from __future__ import annotations

import numpy as np
import pytest

from model_repo.runtime.contract import EngineError
from model_repo.runtime.engine import Engine
from model_repo.runtime.sampling import Sampler, SamplingParams


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(tiny_engine: Engine) -> None:
    ids = tiny_engine.encode("the quick")
    p = SamplingParams(max_tokens=16, temperature=1.5, top_p=0.95, top_k=50, seed=7, ignore_eos=True)
    a = [t.token_id for t in tiny_engine.generate(ids, p)]
    b = [t.token_id for t in tiny_engine.generate(ids, p)]
    assert a == b
    assert a != tiny_engine.greedy_ids(ids, 16)


def test_sampler_respects_top_k_and_top_p() -> None:
    logits = np.array([5.0, 4.0, 3.0, -10.0, -10.0], dtype=np.float32)
    top2 = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0))
    assert {top2(logits) for _ in range(200)} <= {0, 1}
    nucleus = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0))
    assert {nucleus(logits) for _ in range(50)} == {0}
    assert Sampler(SamplingParams())(logits) == 0


def test_min_p_keeps_only_tokens_close_enough_to_the_best() -> None:
    """min_p: a token stays a candidate when p >= min_p * p(best) (after temperature)."""
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    sampler = Sampler(SamplingParams(temperature=1.0, min_p=0.5, seed=0))  # threshold 0.25: tokens 0, 1
    assert {sampler(logits) for _ in range(300)} == {0, 1}
    wide = Sampler(SamplingParams(temperature=1.0, min_p=0.05, seed=0))  # 0.025: all four
    assert {wide(logits) for _ in range(600)} == {0, 1, 2, 3}


def test_top_k_and_min_p_combine() -> None:
    logits = np.log(np.array([0.4, 0.35, 0.2, 0.05], dtype=np.float32))
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=3, min_p=0.6, seed=0))  # 0.24 of 0.4 kept
    assert {sampler(logits) for _ in range(300)} == {0, 1}


def test_a_grammar_mask_limits_greedy_and_sampled_choices() -> None:
    logits = np.array([5.0, 4.0, 3.0, 2.0], dtype=np.float32)
    allowed = np.array([False, False, True, True])
    assert Sampler(SamplingParams())(logits, allowed) == 2
    sampled = Sampler(SamplingParams(temperature=1.0, seed=0))
    assert {sampled(logits, allowed) for _ in range(100)} == {2, 3}
    with pytest.raises(ValueError, match="allows no token"):
        Sampler(SamplingParams())(logits, np.zeros(4, dtype=bool))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"min_p": 1.5},
        {"frequency_penalty": 2.5},
        {"presence_penalty": -3.0},
        {"repetition_penalty": 0.0},
        {"logit_bias": ((1, 101.0),)},
        {"top_logprobs": 21},
        {"guide_type": "yaml"},
        {"guide": "x"},
    ],
)
def test_bad_sampling_params_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(EngineError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize(
    "params", [SamplingParams(), SamplingParams(temperature=1.0, seed=0)], ids=["greedy", "sampled"]
)
def test_non_finite_logits_are_an_error_not_a_token(bad: float, params: SamplingParams) -> None:
    logits = np.array([1.0, bad, 0.5], dtype=np.float32)
    with pytest.raises(ValueError, match="non-finite logits"):
        Sampler(params)(logits)
