"""Evaluation: answer each example's prompt, score the answers against the reference (the example's last
assistant message).

Answers come from a local checkpoint (greedy decoding with transformers, the chat template as at serving
time) or from a served model through its OpenAI API (`--endpoint`, temperature 0), so a deployed stack is
evaluated the same way as a checkpoint. Metrics:

- `exact`: share of answers equal to the reference (surrounding white space and case ignored);
- `rouge`: mean ROUGE-1/2/L F1 from Google's `rouge-score`;
- `bleu`: corpus BLEU from `sacrebleu` (its default 13a tokenisation);
- `perplexity`: exp of the mean negative log-likelihood of the reference answers' tokens given their
  prompts (token-weighted; local checkpoints only: an OpenAI chat API cannot score a given text).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from model_repo.training.data import ChatExample, DataError, parse_example, read_text, text_lines

METRICS = ("exact", "rouge", "bleu", "perplexity")
GENERATING = ("exact", "rouge", "bleu")
PREDICTIONS_FILE = "predictions.jsonl"
EVAL_FILE = "eval.json"


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    examples: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"examples": self.examples, "metrics": self.metrics}


def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if not names:
        raise DataError(f"--metrics {text!r} names no metric; choose from {','.join(METRICS)}")
    if unknown:
        raise DataError(f"unknown metric(s) {unknown}; choose from {','.join(METRICS)}")
    return names


def load_prompts(path: str | Path) -> list[ChatExample]:
    """Prompts from a chat JSON Lines file: a line may end with the user's message (no answer) or with an
    answer, which is then ignored."""
    p, content = read_text(path, "prompts file", "pass chat JSON Lines with --prompts")
    prompts = []
    for number, text in enumerate(text_lines(content), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text) if text.lstrip().startswith("{") else None
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        messages = record.get("messages") if isinstance(record, dict) else None
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            if messages[-1].get("role") == "user":
                messages = [*messages, {"role": "assistant", "content": "-"}]
            text = json.dumps({"messages": messages})
        prompts.append(parse_example(text, f"{p}:{number}", number))
    if not prompts:
        raise DataError(f"{p} holds no prompts")
    return prompts


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    return sum(normalise(p) == normalise(r) for p, r in zip(predictions, references, strict=True)) / len(
        references
    )


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
    return {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in kinds}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def score(names: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """The text metrics of `names` over paired answers and references."""
    out: dict[str, float] = {}
    if "exact" in names:
        out["exact"] = exact_match(predictions, references)
    if "rouge" in names:
        out.update(rouge(predictions, references))
    if "bleu" in names:
        out["bleu"] = bleu(predictions, references)
    return out


def _progress(description: str, total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return bar, bar.add_task(description, total=total)


def prompt_ids(tokenizer: Any, example: ChatExample) -> list[int]:
    ids = tokenizer.apply_chat_template(list(example.prompt), add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def generate_local(
    model: Any,
    tokenizer: Any,
    examples: Sequence[ChatExample],
    max_new_tokens: int,
    description: str = "answering",
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers of a local model to each example's prompt (left-padded batches)."""
    import torch

    model.eval()
    answers: list[str] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bar, task = _progress(description, len(examples))
    with bar, torch.no_grad():
        for start in range(0, len(examples), batch_size):
            prompts = [prompt_ids(tokenizer, e) for e in examples[start : start + batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad,
            )
            for row in out[:, width:]:
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
            bar.advance(task, len(prompts))
    return answers


class EndpointError(RuntimeError):
    """The served model could not answer; the message says what the endpoint replied and what to check."""


def _endpoint_failure(exc: Exception, base: str, model_name: str) -> str:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return f"{base} did not answer in time ({exc}); is the server overloaded, or the URL right?"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach {base} ({exc}); is the server up and the URL its API's base (.../v1)?"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return (
            f"{base} refused the API key (HTTP {exc.status_code}); put the key in the variable "
            "--api-key-env names (default OPENAI_API_KEY)"
        )
    if isinstance(exc, openai.NotFoundError):
        return (
            f"{base} answered 404 for model {model_name!r}; check --served-model and that the URL is the "
            "API's base (.../v1)"
        )
    if isinstance(exc, openai.APIStatusError):
        return f"{base} answered HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.OpenAIError):
        return f"{base}: {exc}"
    raise exc


def generate_endpoint(
    endpoint: str, model_name: str, api_key: str, examples: Sequence[ChatExample], max_new_tokens: int,
    client_factory: Callable[..., Any] | None = None,
) -> list[str]:  # fmt: skip
    """Answers of a served model through its OpenAI chat API (temperature 0)."""
    if client_factory is None:
        from openai import OpenAI

        client_factory = OpenAI
    base = endpoint.rstrip("/")
    url = base if base.endswith("/v1") else base + "/v1"
    client = client_factory(base_url=url, api_key=api_key)
    answers = []
    bar, task = _progress("asking the endpoint", len(examples))
    with bar:
        for example in examples:
            try:
                reply = client.chat.completions.create(
                    model=model_name,
                    messages=cast(Any, list(example.prompt)),
                    temperature=0,
                    max_tokens=max_new_tokens,
                )
            except Exception as exc:
                raise EndpointError(_endpoint_failure(exc, url, model_name)) from None
            answers.append((reply.choices[0].message.content or "").strip())
            bar.advance(task)
    return answers


def perplexity(model: Any, tokenizer: Any, examples: Sequence[ChatExample]) -> float:
    """exp(mean NLL) of the reference answers' tokens given their prompts, over all answer tokens."""
    import torch

    total_nll, total_tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for example in examples:
            prompt = prompt_ids(tokenizer, example)
            full = tokenizer.apply_chat_template(example.messages, tokenize=True)
            full = list(full["input_ids"] if hasattr(full, "keys") else full)
            if full[: len(prompt)] != prompt:
                raise DataError(
                    f"line {example.line}: the chat template renders the prompt differently alone"
                )
            ids = torch.tensor([full])
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = ids[0, 1:]
            nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            answer = nll[len(prompt) - 1 :]
            total_nll += float(answer.sum())
            total_tokens += int(answer.numel())
    return math.exp(total_nll / max(total_tokens, 1))


def text_perplexity(model: Any, tokenizer: Any, text: str, window: int = 256) -> float:
    """exp(mean NLL) of plain text, scored in consecutive windows of `window` tokens (token-weighted)."""
    import torch

    ids = tokenizer(text)["input_ids"]
    total_nll, total_tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start : start + window + 1]])
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk[:, :-1]).logits[0].float()
            nll = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum")
            total_nll += float(nll)
            total_tokens += int(chunk.shape[1] - 1)
    return math.exp(total_nll / max(total_tokens, 1))


def evaluate(
    examples: Sequence[ChatExample],
    metrics: Sequence[str],
    *,
    model_path: str | None = None,
    endpoint: str | None = None,
    served_name: str = "llm",
    api_key: str = "",
    max_new_tokens: int = 64,
    out: str | Path | None = None,
    client_factory: Callable[..., Any] | None = None,
) -> EvalResult:
    """Answer and score every example; with `out`, write `eval.json` and `predictions.jsonl` there."""
    if (model_path is None) == (endpoint is None):
        raise DataError("give exactly one of --model PATH or --endpoint URL")
    if endpoint is not None and "perplexity" in metrics:
        raise DataError("perplexity needs the model's own probabilities: evaluate a local --model for it")
    references = [e.answer for e in examples]
    result = EvalResult(metrics={}, references=references, examples=len(examples))
    model = tokenizer = None
    if model_path is not None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from model_repo.training.finetune import load_model, load_tokenizer

        tokenizer = load_tokenizer(model_path)
        model = load_model(model_path)
    if any(m in GENERATING for m in metrics):
        if model is not None:
            result.predictions = generate_local(model, tokenizer, examples, max_new_tokens)
        else:
            result.predictions = generate_endpoint(
                str(endpoint), served_name, api_key, examples, max_new_tokens, client_factory
            )
        result.metrics.update(score(metrics, result.predictions, references))
    if "perplexity" in metrics:
        result.metrics["perplexity"] = perplexity(model, tokenizer, examples)
    if out is not None:
        target = Path(out)
        target.mkdir(parents=True, exist_ok=True)
        (target / EVAL_FILE).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        with (target / PREDICTIONS_FILE).open("w", encoding="utf-8") as fh:
            for example, prediction in zip(examples, result.predictions or [""] * len(examples), strict=True):
                record = {"line": example.line, "prediction": prediction, "reference": example.answer}
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return result
