"""Distillation from cached teacher targets: the fp32 teacher scores the text once, each epoch costs only
the student's step.

For every token of every conversation the teacher's `k` most likely next tokens and their log-probabilities
(at the distillation temperature, normalised over the whole vocabulary) are kept; the rest of the
vocabulary becomes one "other" bucket holding the remaining probability. The loss is the exact KL between
the teacher's and the student's distributions over those k + 1 outcomes (the student's "other" is its
own mass outside the teacher's k tokens), times T^2 as in the full-vocabulary loss (distill.py). With k
at the vocabulary size it is the full KL; with k = 32 on SmolLM2 the 32 tokens hold 90% of the teacher's
probability on average (on its own answers), the rest is matched as one bucket, and the cache costs 8
bytes a token per k instead of the teacher's forward pass at every step of every epoch. Logits only
(Minitron's alpha = 1), so no labels are needed.

The cache is one safetensors file: the token ids of all sequences end to end, where each begins, and per
token the teacher's top ids (int32) and log-probabilities (float32).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from model_repo.training.data import DataError

TOPK_FILE = "teacher-topk.safetensors"


def score_topk(
    teacher: Any,
    sequences: Sequence[Sequence[int]],
    k: int,
    temperature: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The teacher's top-`k` next-token log-probabilities at `temperature` for every position of each
    sequence (one forward pass each, no gradients), as the tensors `save_topk` writes."""
    import torch

    if k < 1:
        raise DataError(f"--topk must be at least 1 (got {k})")
    if not sequences or any(len(s) < 2 for s in sequences):
        raise DataError("every sequence to score needs at least two tokens")
    teacher.eval()
    ids_parts, top_ids, top_lp, starts = [], [], [], [0]
    with torch.no_grad():
        for i, seq in enumerate(sequences):
            ids = torch.tensor([list(seq)], dtype=torch.long)
            logits = teacher(input_ids=ids).logits[0].float()
            logp = torch.log_softmax(logits / temperature, dim=-1)
            values, indices = logp.topk(min(k, logp.shape[-1]), dim=-1)
            ids_parts.append(ids[0].to(torch.int32))
            top_ids.append(indices.to(torch.int32))
            top_lp.append(values)
            starts.append(starts[-1] + len(seq))
            if progress is not None:
                progress(i + 1, len(sequences))
    return {
        "input_ids": torch.cat(ids_parts),
        "starts": torch.tensor(starts, dtype=torch.int64),
        "top_ids": torch.cat(top_ids),
        "top_logprobs": torch.cat(top_lp),
    }


def write_targets(
    teacher: Any,
    sequences: Sequence[Sequence[int]],
    k: int,
    temperature: float,
    path: str | Path,
    show: bool = True,
) -> Path:
    """Score `sequences` with the teacher (`score_topk`, with a progress bar) and save them to `path`."""
    from rich.progress import Progress

    with Progress(disable=not show) as bar:
        task = bar.add_task("teacher scoring the text (top-k)", total=len(sequences))
        tensors = score_topk(
            teacher, sequences, k, temperature, lambda done, _total: bar.update(task, completed=done)
        )
    return save_topk(path, tensors, temperature)


def save_topk(path: str | Path, tensors: dict[str, Any], temperature: float) -> Path:
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {"temperature": repr(float(temperature)), "k": str(int(tensors["top_ids"].shape[-1]))}
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(p), metadata=meta)
    return p


def load_topk(path: str | Path, temperature: float) -> list[dict[str, Any]]:
    """The cached sequences, one dict of tensors each; `DataError` if the file was scored at another
    temperature (its log-probabilities would be the wrong targets)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise DataError(f"teacher targets {p} do not exist")
    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
        t = {name: f.get_tensor(name) for name in ("input_ids", "starts", "top_ids", "top_logprobs")}
    if float(meta.get("temperature", "nan")) != float(temperature):
        raise DataError(
            f"{p} holds the teacher's targets at temperature {meta.get('temperature')}, not {temperature}: "
            "score the text again at this temperature"
        )
    bounds = t["starts"].tolist()
    return [
        {
            "input_ids": t["input_ids"][a:b].long(),
            "top_ids": t["top_ids"][a:b].long(),
            "top_logprobs": t["top_logprobs"][a:b],
        }
        for a, b in itertools.pairwise(bounds)
    ]


def topk_kl(student_logits: Any, top_ids: Any, top_logprobs: Any, mask: Any, temperature: float = 1.0) -> Any:
    """T^2 * KL(teacher || student) over each position's teacher top-k tokens plus one bucket for the rest
    of the vocabulary, averaged over the positions where `mask` is true."""
    import torch

    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    q_top = log_q.gather(-1, top_ids)
    p_top = top_logprobs.exp()
    p_rest = (1.0 - p_top.sum(-1)).clamp_min(0.0)
    q_rest = torch.log1p(-q_top.exp().sum(-1).clamp(max=1.0 - 1e-6))
    per_token = (p_top * (top_logprobs - q_top)).sum(-1)
    per_token = per_token + torch.where(
        p_rest > 0, p_rest * (torch.log(p_rest.clamp_min(1e-12)) - q_rest), torch.zeros_like(p_rest)
    )
    m = mask.bool()
    if not bool(m.any()):
        return student_logits.sum() * 0.0
    return per_token[m].mean() * temperature**2


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch of cached sequences; `attention_mask` marks the real tokens."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    k = rows[0]["top_ids"].shape[-1]
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        "top_ids": torch.zeros((len(rows), width, k), dtype=torch.long),
        "top_logprobs": torch.zeros((len(rows), width, k), dtype=torch.float32),
    }
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        batch["input_ids"][i, :n] = r["input_ids"]
        batch["attention_mask"][i, :n] = 1
        batch["top_ids"][i, :n] = r["top_ids"]
        batch["top_logprobs"][i, :n] = r["top_logprobs"]
    return batch


def heldout_callback(text: str, tokenizer: Any, every: int, log: Callable[[str], None]) -> Any:
    """A TrainerCallback that measures the student's perplexity on `text` every `every` steps and at the
    end (`history`: [step, perplexity] pairs), so a run shows whether it is still improving."""
    from transformers import TrainerCallback

    from model_repo.training.evaluate import text_perplexity

    class HeldOut(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.history: list[list[float]] = []

        def measure(self, state: Any, model: Any) -> None:
            if not state.is_world_process_zero or (self.history and self.history[-1][0] == state.global_step):
                return
            value = text_perplexity(model, tokenizer, text)
            model.train()
            self.history.append([state.global_step, value])
            log(f"step {state.global_step}: held-out perplexity {value:.2f}")

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.measure(state, kw["model"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if every > 0 and state.global_step % every == 0:
                self.measure(state, kw["model"])

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.measure(state, kw["model"])

    return HeldOut()


def topk_summary(path: str | Path) -> dict[str, Any]:
    """Sequences, tokens and k of a cache file, for the run's summary."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        starts = f.get_slice("starts").get_shape()[0]
        tokens = f.get_slice("input_ids").get_shape()[0]
        meta = f.metadata() or {}
    return {"file": str(path), "sequences": starts - 1, "tokens": tokens, "k": int(meta.get("k", 0)),
            "temperature": float(meta.get("temperature", "nan"))}  # fmt: skip
