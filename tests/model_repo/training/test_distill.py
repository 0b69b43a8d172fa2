"""Distillation: the loss is the temperature-scaled KL to the teacher mixed with the label loss, and a
run (with labels, or on the teacher's own answers) moves the student towards the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repo.training.distill import TEACHER_ANSWERS, DistillConfig, distillation_loss
from model_repo.training.launch import run
from model_repo.training.progress import read_metrics
from tests.model_repo.training.facts import write_facts
from tests.model_repo.training.kl import kl_to_teacher


def test_the_loss_is_kl_times_t_squared_mixed_with_cross_entropy() -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    student, teacher = torch.randn(1, 5, 7), torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 1, 4]])
    loss, kl, ce = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.25)
    rows = [1, 2, 3]  # positions whose next token is labelled
    s, t, y = student[0, rows], teacher[0, rows], labels[0, [2, 3, 4]]
    p_t = F.softmax(t / 2, -1)
    direct_kl = (p_t * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert float(kl) == pytest.approx(float(direct_kl), rel=1e-5)
    assert float(ce) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-5)
    assert float(loss) == pytest.approx(0.25 * float(direct_kl) + 0.75 * float(ce), rel=1e-5)
    mask = torch.tensor([[0, 1, 1, 1, 1]])  # with a mask the KL covers every real position
    _, kl_all, _ = distillation_loss(student, teacher, labels, 2.0, 0.25, mask)
    rows_all = [0, 1, 2, 3]
    s_all, t_all = student[0, rows_all], teacher[0, rows_all]
    direct_all = F.softmax(t_all / 2, -1) * (F.log_softmax(t_all / 2, -1) - F.log_softmax(s_all / 2, -1))
    assert float(kl_all) == pytest.approx(float(direct_all.sum(-1).mean() * 4), rel=1e-5)
    same, kl_same, _ = distillation_loss(teacher, teacher, labels, 2.0, 1.0)
    assert float(kl_same) == pytest.approx(0.0, abs=1e-6) and float(same) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("labelled", [True, False])
def test_distilling_moves_the_student_towards_the_teacher(
    tiny_llama_checkpoint: Path, tmp_path: Path, labelled: bool
) -> None:
    """A student from another seed gets closer to the teacher (KL on the facts' conversations falls); with
    --prompts, the teacher's answers are written beside the checkpoint and used as the data."""
    from model_repo.checkpoint import make_tiny_checkpoint

    student = make_tiny_checkpoint(tmp_path / "student", "llama", seed=1)
    data = write_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "distilled"
    config = DistillConfig(
        teacher=str(tiny_llama_checkpoint), student=str(student), out=str(out),
        data=str(data) if labelled else None, prompts=None if labelled else str(data),
        max_steps=15, learning_rate=3e-3, batch_size=4, alpha=1.0, max_new_tokens=8, show_progress=False,
    )  # fmt: skip
    summary = run("distill", config)
    assert summary["steps"] == 15
    before = kl_to_teacher(student, tiny_llama_checkpoint, data)
    after = kl_to_teacher(out, tiny_llama_checkpoint, data)
    assert after < 0.8 * before
    logged = [m for m in read_metrics(out) if "loss" in m]
    assert logged and all("kl" in m and "ce" in m for m in logged)
    answers = out / TEACHER_ANSWERS
    assert answers.is_file() != labelled
    if not labelled:
        assert len(answers.read_text().splitlines()) >= 1
        assert all("messages" in json.loads(x) for x in answers.read_text().splitlines())
