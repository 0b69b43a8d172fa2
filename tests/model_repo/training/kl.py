"""How far a student checkpoint is from its teacher: the distillation tests' yardstick."""

from __future__ import annotations

from pathlib import Path


def kl_to_teacher(student_dir: Path, teacher_dir: Path, data: Path) -> float:
    """KL(teacher || student) of the next-token distributions, averaged over each conversation's positions
    (chat template applied as at training time) and summed over the conversations in `data`."""
    import torch

    from model_repo.training.data import load_chat_jsonl
    from model_repo.training.finetune import load_model, load_tokenizer

    tok = load_tokenizer(teacher_dir)
    student, teacher = load_model(student_dir).eval(), load_model(teacher_dir).eval()
    total = 0.0
    with torch.no_grad():
        for e in load_chat_jsonl(data):
            ids = torch.tensor([tok.apply_chat_template(e.messages, tokenize=True)["input_ids"]])
            s = student(input_ids=ids).logits.log_softmax(-1)
            t = teacher(input_ids=ids).logits.log_softmax(-1)
            total += float((t.exp() * (t - s)).sum(-1).mean())
    return total
