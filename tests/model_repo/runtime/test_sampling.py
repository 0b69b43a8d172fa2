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


@pytest.mark.parametrize(
    "kwargs", [{"max_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}]
)
def test_bad_sampling_params_are_rejected(kwargs: dict[str, float]) -> None:
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
