"""`tritonform eval --endpoint` against the local stack (issue 17): a real Triton and the gateway started by
`tritonform serve` on the tiny model, evaluated through its OpenAI API as a deployed stack would be; the
figures it prints equal the same metrics (exact match, ROUGE with rouge-score, BLEU with sacrebleu)
computed directly on the answers the official openai client gets for the same requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model_repo.training.data import load_chat_jsonl
from model_repo.training.evaluate import PREDICTIONS_FILE, bleu, exact_match, rouge
from tests.e2e.serve_process import ask_greedily, served
from tests.model_repo.training.facts import write_facts
from tritonform.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_eval_endpoint_scores_the_served_model_like_a_direct_computation(
    tiny_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_facts(tmp_path / "facts.jsonl")
    examples = load_chat_jsonl(data)
    with served(tiny_repository) as (url, key):
        monkeypatch.setenv("LOCAL_STACK_KEY", key)
        result = CliRunner().invoke(app, [
            "eval", "--endpoint", url, "--data", str(data), "--metrics", "exact,rouge,bleu",
            "--api-key-env", "LOCAL_STACK_KEY", "--max-new-tokens", "12", "--out", str(tmp_path / "eval"),
            "--json",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        figures = json.loads(result.output[result.output.index("{") :])
        direct = ask_greedily(url, key, [e.prompt for e in examples], max_tokens=12)
    predictions = [
        json.loads(line)["prediction"]
        for line in (tmp_path / "eval" / PREDICTIONS_FILE).read_text().splitlines()
    ]
    assert predictions == direct  # greedy: the endpoint answered eval as it answers the client
    assert any(predictions)  # the served model said something
    references = [e.answer for e in examples]
    metrics = figures["metrics"]
    assert figures["examples"] == len(examples)
    assert metrics["exact"] == pytest.approx(exact_match(direct, references))
    assert metrics["bleu"] == pytest.approx(bleu(direct, references))
    for name, value in rouge(direct, references).items():
        assert metrics[name] == pytest.approx(value)
