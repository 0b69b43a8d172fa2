"""Intermediate-state distillation: a depth-pruned student also learns the teacher's hidden states.

NVIDIA's Minitron (Compact Language Models via Pruning and Knowledge Distillation) retrains with the
logits alone when depth is cut a little, and adds the intermediate states when depth is cut a lot (its
best practice for depth pruning): the logits say only what the last layer should produce, the states say
what every kept layer should hand on. With the same hidden size (depth pruning and MLP width pruning keep
it) no learned projection is needed: the student's state after its layer j is compared with the
teacher's state at the same depth, the input of the teacher layer that student layer j + 1 came from.
Where layers were dropped just after j, that is the teacher's state after the dropped block, so student
layer j learns to hand on what the dropped layers used to; the last pair is both models' final (normed)
state. The loss is each token's squared error relative to the teacher state's squared norm (the scale
of a transformer's residual stream grows with depth and varies by token), averaged over the pairs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from model_repo.training.data import DataError


def layer_pairs(teacher_layers: int, dropped: Sequence[int]) -> list[tuple[int, int]]:
    """(student, teacher) indices into transformers' `hidden_states` (0: the embeddings; i: the input of
    layer i; the last: the final normed state) at the same depth, for a student made of the teacher's
    layers without `dropped`."""
    gone = set(dropped)
    if any(not 0 <= d < teacher_layers for d in gone):
        raise DataError(
            f"dropped layers {sorted(gone)} are not all layers of a {teacher_layers}-layer teacher"
        )
    kept = [i for i in range(teacher_layers) if i not in gone]
    if not kept:
        raise DataError("the student keeps none of the teacher's layers")
    pairs = [(j + 1, kept[j + 1]) for j in range(len(kept) - 1)]
    return [*pairs, (len(kept), teacher_layers)]


def student_pairs(student: str | Path, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """The pairs for `student`: from its `pruning.json` (written by `tritonform prune`) when it has one,
    else layer for layer when both have the same depth; otherwise a clear error."""
    from model_repo.training.prune import PRUNING_FILE

    record = Path(student) / PRUNING_FILE
    if record.is_file():
        dropped = [int(d) for d in json.loads(record.read_text()).get("dropped", [])]
    elif student_layers == teacher_layers:
        dropped = []
    else:
        raise DataError(
            f"the student has {student_layers} layers and the teacher {teacher_layers}, and no "
            f"{PRUNING_FILE} in {student} says which were dropped: intermediate-state distillation "
            "(--hidden-weight) needs a student made by `tritonform prune` from this teacher, or use "
            "--hidden-weight 0"
        )
    pairs = layer_pairs(teacher_layers, dropped)
    if pairs[-1][0] != student_layers:
        raise DataError(
            f"{record} drops {len(dropped)} of {teacher_layers} layers, but the student has "
            f"{student_layers}: was it pruned from another teacher?"
        )
    return pairs


def check_same_width(student_config: Any, teacher_config: Any) -> None:
    if student_config.hidden_size != teacher_config.hidden_size:
        raise DataError(
            f"intermediate-state distillation compares hidden states, but the student's are "
            f"{student_config.hidden_size} wide and the teacher's {teacher_config.hidden_size}: use "
            "--hidden-weight 0"
        )


def hidden_pairs(
    weight: float, student_path: str, teacher: Any, student: Any, say: Callable[[str], None]
) -> list[tuple[int, int]]:
    """The (student, teacher) hidden-state pairs distillation compares; none when `weight` is 0."""
    if not weight:
        return []
    check_same_width(student.config, teacher.config)
    pairs = student_pairs(student_path, student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    say(f"intermediate states: {len(pairs)} of the student's layers learn the teacher's at the same depth")
    return pairs


def hidden_state_loss(
    student_states: Sequence[Any], teacher_states: Sequence[Any], pairs: Sequence[tuple[int, int]], mask: Any
) -> Any:
    """Mean over `pairs` of the mean over real tokens (mask 1) of |s - t|^2 / |t|^2."""
    real = mask.bool()
    total = student_states[0].new_zeros(())
    for s_index, t_index in pairs:
        s = student_states[s_index][real].float()
        t = teacher_states[t_index][real].float()
        total = total + ((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-12)).mean()
    return total / len(pairs)


def teacher_states(teacher: Any, input_ids: Any, attention_mask: Any) -> tuple[Any, ...]:
    """The teacher's hidden states (no gradient, no output projection: its base model only)."""
    import torch

    with torch.no_grad():
        out = teacher.base_model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
    return tuple(out.hidden_states)
