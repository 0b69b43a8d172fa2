"""Intermediate-state distillation: each kept layer of a depth-pruned student is compared with the
teacher's state at the same depth (after a dropped block: the state the dropped layers handed on), the
loss is the relative squared error over real tokens, and a run with it moves the student's states
towards the teacher's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model_repo.training.data import DataError
from model_repo.training.hidden_states import hidden_state_loss, layer_pairs, student_pairs, teacher_states
from model_repo.training.prune import PRUNING_FILE
from tests.model_repo.training.facts import write_facts
from tests.model_repo.training.silent import with_a_silent_layer


def test_each_kept_layer_is_paired_with_the_teacher_state_at_the_same_depth() -> None:
    # teacher layers 0..5, 2 and 3 dropped: student layers 0, 1, 2, 3 are teacher layers 0, 1, 4, 5
    assert layer_pairs(6, [2, 3]) == [(1, 1), (2, 4), (3, 5), (4, 6)]
    assert layer_pairs(3, []) == [(1, 1), (2, 2), (3, 3)]
    with pytest.raises(DataError, match="not all layers"):
        layer_pairs(4, [4])


def test_the_loss_is_the_relative_squared_error_over_real_tokens() -> None:
    import torch

    torch.manual_seed(0)
    student = [torch.randn(2, 3, 4) for _ in range(3)]
    teacher = [torch.randn(2, 3, 4) for _ in range(4)]
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    pairs = [(1, 1), (2, 3)]
    expected = []
    for s_i, t_i in pairs:
        errors = [
            float(((student[s_i][b, p] - teacher[t_i][b, p]) ** 2).sum() / (teacher[t_i][b, p] ** 2).sum())
            for b in range(2)
            for p in range(3)
            if mask[b, p]
        ]
        expected.append(sum(errors) / len(errors))
    loss = float(hidden_state_loss(student, teacher, pairs, mask))
    assert loss == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert float(hidden_state_loss(teacher, teacher, [(1, 1), (3, 3)], mask)) == 0.0


def _teacher_with_a_silent_layer(tiny: Path, out: Path) -> Any:
    """`with_a_silent_layer`, saved as a checkpoint in `out` (the tiny one's tokenizer beside it)."""
    model = with_a_silent_layer(tiny)
    model.save_pretrained(str(out))
    for f in tiny.iterdir():
        if f.suffix != ".safetensors" and f.name not in ("config.json", "generation_config.json"):
            (out / f.name).write_bytes(f.read_bytes())
    return model


def test_a_student_that_dropped_a_silent_layer_matches_the_teacher_at_every_pair(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """Dropping a no-op layer changes nothing, so at the pairs read from the student's pruning.json the
    loss is zero; the same states paired layer for layer (as if nothing had been dropped) are not."""
    import torch

    from model_repo.training.prune import prune_checkpoint

    teacher = _teacher_with_a_silent_layer(tiny_llama_checkpoint, tmp_path / "teacher")
    calibration = write_facts(tmp_path / "calibration.jsonl")
    prune_checkpoint(tmp_path / "teacher", tmp_path / "student", 1, calibration)
    assert json.loads((tmp_path / "student" / PRUNING_FILE).read_text())["dropped"] == [2]
    pairs = student_pairs(tmp_path / "student", 3, 4)
    assert pairs == [(1, 1), (2, 3), (3, 4)]
    from model_repo.training.finetune import load_model

    student = load_model(tmp_path / "student").eval()
    ids = torch.tensor([[1, 5, 9, 12, 3, 7]])
    mask = torch.ones_like(ids)
    taught = teacher_states(teacher, ids, mask)
    with torch.no_grad():
        own = student(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert float(hidden_state_loss(own, taught, pairs, mask)) == pytest.approx(0.0, abs=1e-9)
    assert float(hidden_state_loss(own, taught, [(1, 1), (2, 2), (3, 3)], mask)) > 1e-3


def test_students_that_cannot_be_paired_are_named(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    assert student_pairs(tmp_path / "plain", 3, 3) == [(1, 1), (2, 2), (3, 3)]
    with pytest.raises(DataError, match=r"no pruning\.json .* says which were dropped"):
        student_pairs(tmp_path / "plain", 2, 4)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / PRUNING_FILE).write_text(json.dumps({"dropped": [1, 2]}))
    with pytest.raises(DataError, match="pruned from another teacher"):
        student_pairs(tmp_path / "other", 3, 4)


def _hidden_loss_on(student_dir: Path, teacher_dir: Path, data: Path) -> float:
    import torch

    from model_repo.training.data import load_chat_jsonl
    from model_repo.training.finetune import load_model, load_tokenizer

    tok = load_tokenizer(teacher_dir)
    student, teacher = load_model(student_dir).eval(), load_model(teacher_dir).eval()
    pairs = student_pairs(student_dir, student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    total = 0.0
    for e in load_chat_jsonl(data):
        ids = torch.tensor([tok.apply_chat_template(e.messages, tokenize=True)["input_ids"]])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            own = student(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        total += float(hidden_state_loss(own, teacher_states(teacher, ids, mask), pairs, mask))
    return total


@pytest.mark.parametrize("topk", [0, 16])
def test_distilling_with_hidden_states_brings_the_students_states_closer_and_logs_the_loss(
    tiny_llama_checkpoint: Path, tmp_path: Path, topk: int
) -> None:
    """A depth-pruned student (one of its layers disturbed) distilled with --hidden-weight, on cached top-k
    targets or with the teacher at every step, ends with states closer to the teacher's than the same
    run on the logits alone; the metrics carry the hidden-state loss, and the output keeps the student's
    pruning.json (which teacher layers it holds)."""
    import torch

    from model_repo.training.distill import DistillConfig, run_distill
    from model_repo.training.finetune import load_model
    from model_repo.training.progress import read_metrics
    from model_repo.training.prune import prune_checkpoint

    _teacher_with_a_silent_layer(tiny_llama_checkpoint, tmp_path / "teacher")
    data = write_facts(tmp_path / "facts.jsonl")
    prune_checkpoint(tmp_path / "teacher", tmp_path / "student", 1, data)
    student = load_model(tmp_path / "student")
    with torch.no_grad():  # something to learn: the silent layer went, so disturb a working one
        for p in student.model.layers[1].parameters():
            p.mul_(0.5)
    student.save_pretrained(str(tmp_path / "student"))
    after = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"distilled-{weight}"
        config = DistillConfig(
            teacher=str(tmp_path / "teacher"), student=str(tmp_path / "student"), out=str(out),
            data=str(data), max_steps=12, learning_rate=3e-3, batch_size=4, alpha=1.0, temperature=1.0,
            topk=topk, topk_file=str(tmp_path / "targets.safetensors") if topk else None,
            hidden_weight=weight, show_progress=False,
        )  # fmt: skip
        assert run_distill(config)["steps"] == 12
        after[weight] = _hidden_loss_on(out, tmp_path / "teacher", data)
        logged = [m for m in read_metrics(out) if "loss" in m]
        assert logged and all(("hidden" in m) == bool(weight) for m in logged)
        assert (out / PRUNING_FILE).read_text() == (tmp_path / "student" / PRUNING_FILE).read_text()
    assert after[1.0] < 0.9 * after[0.0]
