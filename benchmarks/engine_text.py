"""Distillation text, fast: the teacher's built repository answers prompts in the kit's own engine.

Transformers' `generate` answers one prompt at a time in PyTorch; the engine (model_repo/runtime, the
same onnxruntime code Triton serves) runs `streams` sequences in one continuous batch, a finished one
replaced by the next at once, and an int4 build reads a quarter of the weights per token. Each prompt
is answered `answers_per_prompt` times from one prefill, every answer sampled with its own seed
(`seed` + its index), so the text varies and a re-run with the same settings gives the same text.

The KL targets are not taken from these answers' sampled tokens: the fp32 teacher scores the text
afterwards (model_repo/training/teacher_topk.py), so the engine only has to write plausible prose.
It lives with the benchmarks, not in model_repo/training: the trainer image (docker/trainer) ships the
training package without the engine runtime, and the build layer may not import training code; this
runs where the kit builds, for bench_compression.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_repo.training.data import ChatExample, DataError

# progress(answers finished, answers asked, tokens generated so far)
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class SampledText:
    """How the engine answers: how many answers per prompt, how long, how many at once, how sampled."""

    answers_per_prompt: int = 4
    max_new_tokens: int = 160
    streams: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0

    def validate(self) -> None:
        for name in ("answers_per_prompt", "max_new_tokens", "streams"):
            if getattr(self, name) < 1:
                raise DataError(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.temperature <= 0:
            raise DataError(f"temperature must be positive for varied answers (got {self.temperature})")
        if not 0.0 < self.top_p <= 1.0:
            raise DataError(f"top-p must be in (0, 1] (got {self.top_p})")


def engine_answers(
    engine_dir: str | Path,
    tokenizer: Any,
    prompts: Sequence[Sequence[dict[str, str]]],
    settings: SampledText,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> list[ChatExample]:
    """Every prompt answered `settings.answers_per_prompt` times by the engine at `engine_dir` (a built
    repository's `llm/1/engine`), `settings.streams` answers advancing together. `tokenizer` is the
    checkpoint's Hugging Face tokenizer (its chat template renders each prompt as at serving time).
    Answers in prompt order; empty ones are left out."""
    from model_repo.runtime.contract import EngineError
    from model_repo.runtime.engine import Engine
    from model_repo.runtime.sampling import SamplingParams

    settings.validate()
    if not prompts:
        raise DataError("no prompts to answer")
    try:
        engine = Engine.load(engine_dir, num_threads=threads)
    except EngineError as exc:
        raise DataError(f"cannot open the teacher's engine: {exc}") from None
    n = settings.answers_per_prompt
    ids = [
        list(tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=True)["input_ids"])
        for p in prompts
    ]
    batch = engine.new_batch()
    waiting = deque(range(len(prompts)))
    tokens: dict[str, list[int]] = {}
    finished: dict[str, str] = {}
    generated = 0

    def take(out: Any) -> None:
        nonlocal generated
        if out.error is not None:
            raise DataError(f"the teacher's engine failed on answer {out.request_id}: {out.error}")
        if not out.is_stop_token:
            tokens[out.request_id].append(out.token_id)
            generated += 1
        if out.finished:
            finished[out.request_id] = engine.decode(tokens.pop(out.request_id)).strip()
            if progress is not None:
                progress(len(finished), len(prompts) * n, generated)

    while waiting or len(batch):
        # admit whole prompts (one prefill each) while their answers fit, at least one if the batch is empty
        while waiting and (len(batch) == 0 or len(batch) + n <= settings.streams):
            i = waiting.popleft()
            rids = [f"{i}.{k}" for k in range(n)]
            params = [
                SamplingParams(
                    max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                    top_p=settings.top_p, seed=settings.seed + i * n + k,
                )
                for k in range(n)
            ]  # fmt: skip
            for rid in rids:
                tokens[rid] = []
            for out in batch.add_group(rids, ids[i], params):
                take(out)
        for out in batch.step():
            take(out)
    examples: list[ChatExample] = []
    for i, prompt in enumerate(prompts):
        for k in range(n):
            text = finished.get(f"{i}.{k}", "")
            if text:
                examples.append(ChatExample(tuple(prompt), text, len(examples) + 1))
    if not examples:
        raise DataError("the teacher's engine answered none of the prompts; check its build and the prompts")
    return examples
