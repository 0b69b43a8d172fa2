"""Quality gates: fp32 parity and quantised agreement/perplexity with overridable thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_repo.gates import (
    DECODE_PROMPTS,
    DECODE_TOKENS,
    HELDOUT_TEXT,
    GateError,
    check_parity,
    check_quality,
)
from model_repo.runtime.engine import Engine


def test_heldout_text_ships_with_the_package() -> None:
    text = HELDOUT_TEXT.read_text(encoding="utf-8")
    assert 3000 < len(text) < 20000 and text.isascii()


def test_identical_models_agree_fully(tiny_engine: Engine) -> None:
    result = check_quality(tiny_engine, tiny_engine)
    assert result.passed and result.agreement == 1.0 and abs(result.perplexity_increase) < 1e-9
    assert result.tokens > 500
    # the decode gate's sample: every decode prompt's full answer (a few tokens are too noisy a figure)
    assert (
        result.decode_agreement == 1.0 and result.decode_tokens == len(DECODE_PROMPTS) * DECODE_TOKENS >= 512
    )


def test_decode_path_logits_match_a_prefill(tiny_engine: Engine) -> None:
    """Teacher forcing through the KV cache one token at a time gives the logits of one prefill."""
    ids = tiny_engine.encode("The quick brown fox jumps over the lazy dog, again and again.")
    full = tiny_engine.prompt_logits(ids)
    stepped = tiny_engine.decode_logits(ids, 4)
    assert stepped.shape == (len(ids) - 4, full.shape[-1])
    np.testing.assert_allclose(stepped, full[3:-1], rtol=1e-3, atol=1e-3)


def test_a_model_that_prefills_right_but_decodes_wrong_fails(tiny_engine: Engine) -> None:
    """The gate checks generation itself, not only the prefill path that teacher forcing uses."""

    class DecodesWrong:
        def __init__(self, inner: Engine) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def decode_logits(self, ids: list[int], prefix_len: int) -> np.ndarray:
            return -self.inner.decode_logits(ids, prefix_len)  # argmax becomes the least likely token

    result = check_quality(DecodesWrong(tiny_engine), tiny_engine, raise_on_fail=False)  # type: ignore[arg-type]
    assert result.agreement == 1.0 and result.decode_agreement < 0.5 and not result.passed
    with pytest.raises(GateError, match="while generating"):
        check_quality(DecodesWrong(tiny_engine), tiny_engine)  # type: ignore[arg-type]


def test_quantised_model_is_measured_and_thresholds_apply(tiny_engine: Engine, tiny_llama_int8: Path) -> None:
    quant = Engine.load(tiny_llama_int8, num_threads=1)
    lenient = check_quality(quant, tiny_engine, min_agreement=0.5, max_ppl_increase=0.5)
    assert lenient.passed and 0.5 < lenient.agreement < 1.0
    with pytest.raises(GateError, match=r"next-token agreement .* while generating \(minimum 100.0% each\)"):
        check_quality(quant, tiny_engine, min_agreement=1.0)
    strict = check_quality(quant, tiny_engine, min_agreement=0.0, max_ppl_increase=-1.0, raise_on_fail=False)
    assert not strict.passed


def test_parity_gate_fails_for_a_different_model(tiny_engine: Engine, tmp_path: Path) -> None:
    """The fp32 gate really compares against PyTorch: another checkpoint's tokens do not pass."""
    from model_repo.checkpoint import make_tiny_checkpoint
    from model_repo.export import load_torch_model

    other, _tokenizer = load_torch_model(make_tiny_checkpoint(tmp_path / "other", "llama", seed=3))
    with pytest.raises(GateError, match="fp32 parity failed"):
        check_parity(tiny_engine, other, n_tokens=16)
