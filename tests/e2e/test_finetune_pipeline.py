"""Issue 17's first target, end to end on the default model (SmolLM2-135M): on made-up facts the base model
cannot know, exact match is ~0%; a LoRA fine-tune (`tritonform finetune`) takes it to >= 90%; the
fine-tuned checkpoint, built by `tritonform build` and served by `tritonform serve` (a real Triton and the
gateway), answers them through the official openai client.

The fine-tuned checkpoint and its repository are cached under ${TRITONFORM_CACHE:-~/.cache/tritonform}, keyed
by the facts, the training code and the build code, so the suite pays for them once."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model_repo.checkpoint import cache_dir, fetch_default
from model_repo.training.data import load_chat_jsonl
from model_repo.training.evaluate import evaluate, exact_match
from tests.e2e.serve_process import ask_greedily, served
from tests.model_repo.training.facts import write_facts
from tritonform.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]

TRAINING = Path(__file__).resolve().parents[2] / "model_repo" / "training"
ARGS = ("--lora", "--max-steps", "10", "--batch-size", "12", "--lr", "3e-3", "--lora-rank", "16")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part + b"\0")
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_facts(tmp_path_factory.mktemp("facts") / "facts.jsonl")


@pytest.fixture(scope="module")
def finetuned(facts: Path) -> tuple[Path, dict[str, object]]:
    """`tritonform finetune --model default --data facts --lora ...` (cached by content)."""
    base = fetch_default()
    code = b"".join(p.read_bytes() for p in sorted(TRAINING.glob("*.py")))
    key = _digest(facts.read_bytes(), code, base.name.encode(), " ".join(ARGS).encode())
    target = cache_dir() / "finetuned" / f"facts-{key}"
    if not (target / "training.json").is_file():
        staging = target.with_name(f".{target.name}")
        shutil.rmtree(staging, ignore_errors=True)
        result = CliRunner().invoke(
            app, ["finetune", "--model", "default", "--data", str(facts), "--out", str(staging), *ARGS]
        )
        assert result.exit_code == 0, result.output
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target, json.loads((target / "training.json").read_text())


@pytest.fixture(scope="module")
def repository(finetuned: tuple[Path, dict[str, object]]) -> Path:
    """`tritonform build --model FINETUNED` (fp32, parity gate on), cached by checkpoint and build code."""
    from model_repo.build import build_code_digest
    from model_repo.checkpoint import checkpoint_hash
    from model_repo.manifest import MANIFEST_FILE

    checkpoint = finetuned[0]
    target = cache_dir() / "repositories" / f"finetuned-{build_code_digest(checkpoint_hash(checkpoint))[:16]}"
    if not (target / MANIFEST_FILE).is_file():
        result = CliRunner().invoke(app, ["build", "--model", str(checkpoint), "--out", str(target)])
        assert result.exit_code == 0, result.output
    return target


def test_lora_finetune_takes_exact_match_from_zero_to_ninety_percent(
    facts: Path, finetuned: tuple[Path, dict[str, object]]
) -> None:
    examples = load_chat_jsonl(facts)
    before = evaluate(examples, ["exact"], model_path=str(fetch_default()), max_new_tokens=16)
    after = evaluate(examples, ["exact", "perplexity"], model_path=str(finetuned[0]), max_new_tokens=16)
    print(f"exact match: base {before.metrics['exact']:.0%} -> fine-tuned {after.metrics['exact']:.0%}")
    assert before.metrics["exact"] <= 0.1
    assert after.metrics["exact"] >= 0.9, list(zip(after.predictions, after.references, strict=True))
    summary = finetuned[1]
    assert summary["losses"][-1] < 0.1 * summary["losses"][0]  # type: ignore[index,operator]


def test_the_finetuned_model_built_and_served_answers_through_openai(facts: Path, repository: Path) -> None:
    examples = load_chat_jsonl(facts)
    with served(repository) as (url, key):
        answers = ask_greedily(url, key, [e.prompt for e in examples], max_tokens=16)
    served_exact = exact_match(answers, [e.answer for e in examples])
    print(f"served exact match: {served_exact:.0%}")
    assert served_exact >= 0.9, list(zip(answers, [e.answer for e in examples], strict=True))
