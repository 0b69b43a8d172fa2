"""The teacher's distillation text from the kit's engine: every prompt answered n times in one continuous
batch, each answer sampled with its own seed, reproducibly, and bad settings or a bad engine folder are
clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from engine_text import SampledText, engine_answers

from model_repo.training.data import DataError

PROMPTS = [[{"role": "user", "content": f"Tell me about item {i}."}] for i in range(3)]


def _tok(checkpoint: Path) -> object:
    from model_repo.training.finetune import load_tokenizer

    return load_tokenizer(checkpoint)


def test_every_prompt_is_answered_n_times_in_order_and_reproducibly(
    tiny_llama_checkpoint: Path, tiny_llama_export: Path
) -> None:
    """3 prompts x 2 answers come back grouped by prompt; the same settings give the same text, the two
    answers of one prompt differ (own seeds), and how many streams run together does not change them."""
    tok = _tok(tiny_llama_checkpoint)
    settings = SampledText(answers_per_prompt=2, max_new_tokens=12, streams=4, temperature=1.0, seed=3)
    seen: list[tuple[int, int, int]] = []
    first = engine_answers(
        tiny_llama_export, tok, PROMPTS, settings, threads=1, progress=lambda *a: seen.append(a)
    )
    assert [e.prompt[0]["content"] for e in first] == [p[0]["content"] for p in PROMPTS for _ in range(2)]
    assert seen[-1][:2] == (6, 6) and seen[-1][2] > 0  # every answer reported, tokens counted
    again = engine_answers(tiny_llama_export, tok, PROMPTS, settings, threads=1)
    assert [e.answer for e in again] == [e.answer for e in first]
    assert any(first[2 * i].answer != first[2 * i + 1].answer for i in range(3))
    one_at_a_time = engine_answers(
        tiny_llama_export, tok, PROMPTS, SampledText(2, 12, streams=1, temperature=1.0, seed=3), threads=1
    )
    assert [e.answer for e in one_at_a_time] == [e.answer for e in first]
    other_seed = engine_answers(
        tiny_llama_export, tok, PROMPTS, SampledText(2, 12, 4, temperature=1.0, seed=4), threads=1
    )
    assert [e.answer for e in other_seed] != [e.answer for e in first]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (SampledText(answers_per_prompt=0), "answers-per-prompt must be at least 1"),
        (SampledText(streams=0), "streams must be at least 1"),
        (SampledText(temperature=0.0), "temperature must be positive"),
        (SampledText(top_p=1.5), "top-p must be in"),
    ],
)
def test_bad_settings_say_what_to_change(settings: SampledText, message: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=message):
        engine_answers(tmp_path, None, PROMPTS, settings)


def test_a_folder_without_an_engine_is_a_clear_error(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot open the teacher's engine"):
        engine_answers(tmp_path / "nothing", _tok(tiny_llama_checkpoint), PROMPTS, SampledText())
