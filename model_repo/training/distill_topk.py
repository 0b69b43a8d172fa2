"""The student's side of distillation from cached teacher targets (teacher_topk.py): a transformers
`Trainer` whose batches carry the teacher's top-k log-probabilities and whose loss is `topk_kl`.

The teacher scores the conversations once, rendered with the chat template as at serving time and cut at
`max_length` tokens, into `targets` (kept when it already holds this text's targets, so several students,
learning rates or schedules reuse one scoring); then the teacher is freed and each step costs the student's
forward and backward pass only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from model_repo.training.data import ChatExample, DataError
from model_repo.training.teacher_topk import collate, load_topk, write_targets

# `config` below is distill.DistillConfig (not imported: distill imports this module)


def rendered(tokenizer: Any, examples: list[ChatExample], max_length: int) -> list[list[int]]:
    """Each conversation's token ids as the chat template renders it at serving time, cut at `max_length`."""
    out = []
    for e in examples:
        ids = list(tokenizer.apply_chat_template(e.messages, tokenize=True)["input_ids"])[:max_length]
        if len(ids) >= 2:
            out.append(ids)
    if not out:
        raise DataError("no conversation renders to two tokens or more; check the data")
    return out


def teacher_targets(
    config: Any, teacher: Any, tokenizer: Any, examples: list[ChatExample], targets: Path
) -> list[dict[str, Any]]:
    """The cached targets for `examples` (scored now unless `targets` holds exactly these sequences)."""
    import torch

    sequences = rendered(tokenizer, examples, config.max_length)
    if targets.is_file():
        rows = load_topk(targets, config.temperature)
        same = len(rows) == len(sequences) and all(
            r["input_ids"].tolist() == s for r, s in zip(rows, sequences, strict=True)
        )
        if same and rows[0]["top_ids"].shape[-1] == config.topk:
            return rows
    if int(os.environ.get("RANK", "0")) == 0:
        write_targets(teacher, sequences, config.topk, config.temperature, targets, config.show_progress)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return load_topk(targets, config.temperature)


def train_on_topk(
    config: Any,
    teacher: Any,
    student: Any,
    tokenizer: Any,
    examples: list[ChatExample],
    targets: Path,
    arguments: dict[str, Any],
    callbacks: list[Any],
) -> Any:
    """A ready `Trainer` (call `.train()`) of `student` on the teacher's cached top-k targets."""
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    from model_repo.training.finetune import quiet
    from model_repo.training.hidden_states import hidden_pairs, hidden_state_loss, teacher_states
    from model_repo.training.progress import with_loss_parts
    from model_repo.training.teacher_topk import topk_kl

    rows = teacher_targets(config, teacher, tokenizer, examples, targets)
    pairs = hidden_pairs(config.hidden_weight, config.student, teacher, student, print)
    if not pairs:
        teacher.to("meta")  # its job is done: free its weights before the student trains
    parts: dict[str, list[float]] = {"kl": [], "hidden": []}

    class Rows(Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return rows[i]

    class TopKTrainer(Trainer):  # type: ignore[misc]
        """Trainer whose loss is the KL to the teacher's cached top-k distribution at every real token."""

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: Any = False, num_items_in_batch: Any = None
        ) -> Any:
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            outputs = model(input_ids=ids, attention_mask=mask, output_hidden_states=bool(pairs))
            top_ids, top_logprobs = inputs["top_ids"], inputs["top_logprobs"]
            loss = topk_kl(outputs.logits, top_ids, top_logprobs, mask, config.temperature)
            if pairs:  # the teacher runs beside the student for its states (its logits stay cached)
                parts["kl"].append(float(loss.detach()))
                taught = teacher_states(teacher.to(ids.device), ids, mask)
                hidden = hidden_state_loss(outputs.hidden_states, taught, pairs, mask)
                parts["hidden"].append(float(hidden.detach()))
                loss = loss + config.hidden_weight * hidden
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            super().log(with_loss_parts(logs, parts), *args, **kwargs)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = TopKTrainer(
        model=student,
        args=TrainingArguments(**arguments, remove_unused_columns=False),
        train_dataset=Rows(),
        data_collator=lambda batch: collate(batch, pad),
        callbacks=callbacks,
    )
    quiet(trainer)
    return trainer
