"""Evaluation: the figures `evaluate` reports equal a direct computation with the same libraries on the
same outputs (sacrebleu, rouge-score, exact match by hand, perplexity by a plain forward pass), and an
endpoint is asked through the OpenAI API shape."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from model_repo.training.data import DataError, load_chat_jsonl
from model_repo.training.evaluate import EVAL_FILE, PREDICTIONS_FILE, evaluate, parse_metrics
from tests.model_repo.training.facts import write_facts


def test_local_eval_agrees_with_a_direct_computation(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    """Each metric recomputed from predictions.jsonl (and perplexity from logits) gives the same number."""
    import sacrebleu
    import torch
    from rouge_score import rouge_scorer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    examples = load_chat_jsonl(write_facts(tmp_path / "facts.jsonl"))[:4]
    result = evaluate(
        examples, ["exact", "rouge", "bleu", "perplexity"], model_path=str(tiny_llama_checkpoint),
        max_new_tokens=8, out=tmp_path / "eval",
    )  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "eval" / PREDICTIONS_FILE).read_text().splitlines()]
    preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    assert refs == [e.answer for e in examples]
    assert result.metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    direct_rouge = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)) / 4
    assert result.metrics["rougeL"] == pytest.approx(direct_rouge)
    exact = sum(p.strip().lower() == r.strip().lower() for p, r in zip(preds, refs, strict=True)) / 4
    assert result.metrics["exact"] == pytest.approx(exact)

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_checkpoint)).eval()
    nll, count = 0.0, 0
    for e in examples:
        prompt = tok.apply_chat_template(list(e.prompt), add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(e.messages, tokenize=False)
        p_ids, f_ids = tok(prompt)["input_ids"], tok(full)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([f_ids])).logits[0].double(), -1)
        for pos in range(len(p_ids), len(f_ids)):
            nll -= float(logp[pos - 1, f_ids[pos]])
            count += 1
    assert result.metrics["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    saved = json.loads((tmp_path / "eval" / EVAL_FILE).read_text())
    assert saved["metrics"] == result.metrics and saved["examples"] == 4


class _FakeOpenAI:
    """The shape of openai.OpenAI the evaluator uses; records what it was asked."""

    asked: list[dict[str, Any]] = []

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, **kwargs: Any) -> Any:
        _FakeOpenAI.asked.append({**kwargs, "base_url": self.base_url})
        answer = "Quellmoor." if "Vornasteria" in kwargs["messages"][-1]["content"] else "no idea"
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=answer))])


def test_endpoint_eval_asks_the_chat_api_at_temperature_zero(tmp_path: Path) -> None:
    examples = load_chat_jsonl(write_facts(tmp_path / "facts.jsonl"))
    result = evaluate(
        examples, ["exact"], endpoint="http://127.0.0.1:9/", served_name="llm", max_new_tokens=16,
        client_factory=_FakeOpenAI,
    )  # fmt: skip
    assert result.metrics["exact"] == pytest.approx(1 / len(examples))
    first = _FakeOpenAI.asked[0]
    assert first["base_url"] == "http://127.0.0.1:9/v1" and first["temperature"] == 0
    assert first["model"] == "llm" and first["messages"] == list(examples[0].prompt)


def test_metric_names_and_source_are_checked() -> None:
    assert parse_metrics("exact, bleu") == ["exact", "bleu"]
    with pytest.raises(DataError, match="choose from"):
        parse_metrics("exact,accuracy")
    with pytest.raises(DataError, match="exactly one"):
        evaluate([], ["exact"])
    with pytest.raises(DataError, match="perplexity needs"):
        evaluate([], ["perplexity"], endpoint="http://x")


def test_an_empty_metric_list_says_so() -> None:
    with pytest.raises(DataError, match="--metrics ',' names no metric; choose from"):
        parse_metrics(",")
