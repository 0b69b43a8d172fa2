"""Distillation from cached teacher targets: the top-k + rest KL is exact on those k + 1 outcomes (the full
KL when k is the vocabulary), the cache holds the teacher's own log-probabilities, and a run trained only
on it moves the student towards the teacher, reusing the targets on the next run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model_repo.training.data import DataError
from model_repo.training.teacher_topk import collate, load_topk, save_topk, score_topk, topk_kl
from tests.model_repo.training.kl import kl_to_teacher


def _full_kl(s: Any, t: Any, temperature: float) -> float:
    import torch.nn.functional as F

    lp, lq = F.log_softmax(t / temperature, -1), F.log_softmax(s / temperature, -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean() * temperature**2)


def test_topk_kl_is_the_kl_over_the_top_k_and_one_bucket_for_the_rest() -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    s, t = torch.randn(1, 4, 11), torch.randn(1, 4, 11) * 2
    mask = torch.ones(1, 4)
    full = torch.log_softmax(t / 2.0, -1).topk(11, -1)
    whole = float(topk_kl(s, full.indices, full.values, mask, 2.0))
    assert whole == pytest.approx(_full_kl(s, t, 2.0), rel=1e-5)
    top = torch.log_softmax(t, -1).topk(3, -1)
    value = float(topk_kl(s, top.indices, top.values, mask))
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    pk, qk = p.gather(-1, top.indices), q.gather(-1, top.indices)
    buckets_p = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    buckets_q = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    direct = float((buckets_p * (buckets_p.log() - buckets_q.log())).sum(-1).mean())
    assert value == pytest.approx(direct, rel=1e-4)
    assert value <= _full_kl(s, t, 1.0) + 1e-6  # coarser outcomes never raise the KL
    assert float(topk_kl(t, top.indices, top.values, mask)) == pytest.approx(0.0, abs=1e-5)
    only_first = torch.tensor([[1, 0, 0, 0]])
    first = float(topk_kl(s[:, :1], top.indices[:, :1], top.values[:, :1], torch.ones(1, 1)))
    assert float(topk_kl(s, top.indices, top.values, only_first)) == pytest.approx(first, rel=1e-5)


def test_the_cache_holds_the_teachers_log_probabilities(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    """Scored, saved and loaded back: each sequence's ids and, per token, the teacher's k best
    log-probabilities at the temperature; another temperature is refused; collate pads on the right."""
    import torch

    from model_repo.training.finetune import load_model

    teacher = load_model(tiny_llama_checkpoint).eval()
    seqs = [[5, 9, 12, 7], [3, 4]]
    path = save_topk(tmp_path / "t.safetensors", score_topk(teacher, seqs, 4, 2.0), 2.0)
    rows = load_topk(path, 2.0)
    assert [r["input_ids"].tolist() for r in rows] == seqs
    with torch.no_grad():
        logp = torch.log_softmax(teacher(input_ids=torch.tensor([seqs[0]])).logits[0] / 2.0, -1)
    assert torch.allclose(rows[0]["top_logprobs"], logp.topk(4, -1).values, atol=1e-5)
    assert torch.equal(rows[0]["top_ids"], logp.topk(4, -1).indices)
    with pytest.raises(DataError, match=r"temperature 2\.0, not 1\.0"):
        load_topk(path, 1.0)
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 9, 12, 7], [3, 4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["top_ids"].shape == (2, 4, 4)
    with pytest.raises(DataError, match="at least two tokens"):
        score_topk(teacher, [[1]], 4)


def test_distilling_on_cached_targets_moves_the_student_and_reuses_them(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """--topk: the teacher scores the data once into the targets file, the student's KL to the teacher
    falls, held-out perplexity is measured along the way; a second run finds the same targets and keeps
    them (the file is not rewritten)."""
    from model_repo.checkpoint import make_tiny_checkpoint
    from model_repo.training.distill import DistillConfig, run_distill
    from tests.model_repo.training.facts import write_facts

    student = make_tiny_checkpoint(tmp_path / "student", "llama", seed=1)
    data = write_facts(tmp_path / "facts.jsonl")
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("The keeper lit the lamp at dusk and watched the boats come home.\n")
    targets = tmp_path / "targets.safetensors"
    config = DistillConfig(
        teacher=str(tiny_llama_checkpoint), student=str(student), out=str(tmp_path / "d1"), data=str(data),
        max_steps=15, learning_rate=3e-3, batch_size=4, alpha=1.0, temperature=1.0, topk=16,
        topk_file=str(targets), schedule="cosine", warmup_steps=2, heldout=str(heldout), eval_every=5,
        show_progress=False,
    )  # fmt: skip
    summary = run_distill(config)
    assert summary["steps"] == 15 and targets.is_file()
    before = kl_to_teacher(student, tiny_llama_checkpoint, data)
    assert kl_to_teacher(Path(config.out), tiny_llama_checkpoint, data) < 0.8 * before
    assert [step for step, _ in summary["heldout_perplexity"]] == [0, 5, 10, 15]
    assert json.loads((Path(config.out) / "training.json").read_text())["tokens_seen"] > 0
    stamp = targets.stat().st_mtime_ns
    from dataclasses import replace

    run_distill(replace(config, out=str(tmp_path / "d2"), max_steps=2, heldout=None, eval_every=0))
    assert targets.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"topk": 8, "alpha": 0.5}, "--topk trains on the teacher's logits only"),
        ({"topk": -1}, "--topk must be 0"),
        ({"schedule": "steps"}, "--schedule 'steps'"),
        ({"heldout": "/nonexistent.txt"}, "--heldout /nonexistent.txt does not exist"),
        ({"quant_aware": "int3"}, "--quant-aware 'int3': choose one of none, int4"),
        ({"quant_aware": "int4", "strategy": "fsdp"}, "FSDP shards"),
        ({"hidden_weight": -0.5}, "--hidden-weight must be 0"),
        ({"hidden_weight": float("nan")}, "--hidden-weight must be 0"),
        ({"temperature": float("nan")}, "--temperature must be a positive number"),
        ({"alpha": float("nan")}, "--alpha must be between 0 and 1"),
        ({"learning_rate": 0.0}, "--lr must be a positive number"),
        ({"learning_rate": float("nan")}, "--lr must be a positive number"),
        ({"epochs": float("inf")}, "--epochs must be a finite number"),
        ({"epochs": 0.0}, "give a positive --epochs or --max-steps"),
        ({"max_steps": 0}, "--max-steps must be a positive number of steps, or -1"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"warmup_steps": -1}, "--warmup-steps must be 0 or more"),
        ({"eval_every": 5}, "--eval-every measures the perplexity of --heldout FILE"),
    ],
)
def test_bad_distillation_settings_are_named(changes: dict[str, object], message: str) -> None:
    from model_repo.training.distill import DistillConfig

    base = {"teacher": "t", "student": "s", "out": "o", "data": "d", "alpha": 1.0}
    with pytest.raises(DataError, match=message):
        DistillConfig(**{**base, **changes}).validate()  # type: ignore[arg-type]
