"""Knowledge distillation: a (pruned) student learns the teacher's next-token distributions.

The loss is `alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(label)`: the KL over every real
token of each conversation, the label loss over the answer's tokens, both distributions softened by the
temperature T (Hinton et al.; NVIDIA's Minitron recipe trains the
pruned model on the teacher's logits the same way). It runs inside TRL's `SFTTrainer` (the same data
handling, chat template and answer-only mask as fine-tuning), with only `compute_loss` replaced.

Without `--data`, the teacher first answers the prompts of `--prompts` (greedy) and the student learns
from those answers: no labelled data is needed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model_repo.training.data import ChatExample, DataError, load_chat_jsonl, read_text, write_chat_jsonl
from model_repo.training.finetune import (
    SUMMARY_FILE,
    TRAINER_DIR,
    FinetuneConfig,
    check_finite,
    check_schedule,
    load_model,
    load_tokenizer,
    quiet,
    say_line,
    to_dataset,
    trainer_arguments,
    world_size,
)
from model_repo.training.hidden_states import hidden_pairs, hidden_state_loss
from model_repo.training.quant_aware import MODES as QUANT_AWARE
from model_repo.training.quant_aware import keep_rounded, train_through_rounding
from model_repo.training.teacher_topk import TOPK_FILE, heldout_callback

TEACHER_ANSWERS = "teacher-answers.jsonl"
SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class DistillConfig:
    teacher: str
    student: str
    out: str
    data: str | None = None  # labelled chat data
    prompts: str | None = None  # without data: the teacher answers these
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 1e-4
    batch_size: int = 8
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the KL term; 1 - alpha on the label loss
    max_length: int = 512
    max_new_tokens: int = 128
    seed: int = 0
    strategy: str = "ddp"
    show_progress: bool = True
    # > 0: the fp32 teacher scores the text once (its top-k log-probabilities, teacher_topk.py) and every
    # epoch trains only the student on those targets; logits only, so alpha must be 1
    topk: int = 0
    topk_file: str | None = None  # where the targets are kept (reused if present); default out/
    schedule: str = "constant"  # the learning rate over the run: constant, cosine or linear
    warmup_steps: int = 0
    heldout: str | None = None  # plain text whose perplexity is printed every `eval_every` steps
    eval_every: int = 0
    # "int4": the student trains through the int4 build's rounding and is written rounded (quant_aware.py)
    quant_aware: str = "none"
    # > 0: also the teacher's hidden states, at the same depth (hidden_states.py; Minitron's recipe for
    # depth-pruned students), weighted by this against the KL
    hidden_weight: float = 0.0

    def validate(self) -> None:
        if (self.data is None) == (self.prompts is None):
            raise DataError(
                "give exactly one of --data FILE (labelled) or --prompts FILE (the teacher answers)"
            )
        check_schedule(self.epochs, self.max_steps, self.batch_size, self.learning_rate)
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise DataError(f"--temperature must be a positive number (got {self.temperature})")
        if not 0.0 <= self.alpha <= 1.0:  # False for NaN too
            raise DataError(f"--alpha must be between 0 and 1 (got {self.alpha})")
        if self.warmup_steps < 0:
            raise DataError(f"--warmup-steps must be 0 or more (got {self.warmup_steps})")
        if self.eval_every < 0:
            raise DataError(f"--eval-every must be 0 (off) or a number of steps (got {self.eval_every})")
        if self.eval_every and self.heldout is None:
            raise DataError("--eval-every measures the perplexity of --heldout FILE: give that file too")
        if self.max_new_tokens < 1:
            raise DataError(f"the teacher's answers need at least 1 new token (got {self.max_new_tokens})")
        if self.topk < 0:
            raise DataError(f"--topk must be 0 (teacher at every step) or positive (got {self.topk})")
        if self.topk and self.alpha != 1.0:
            raise DataError("--topk trains on the teacher's logits only: use --alpha 1 (or --topk 0)")
        if not (math.isfinite(self.hidden_weight) and self.hidden_weight >= 0):
            raise DataError(f"--hidden-weight must be 0 (logits only) or positive (got {self.hidden_weight})")
        if self.schedule not in SCHEDULES:
            raise DataError(f"--schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.quant_aware not in QUANT_AWARE:
            raise DataError(f"--quant-aware {self.quant_aware!r}: choose one of {', '.join(QUANT_AWARE)}")
        if self.quant_aware != "none" and self.strategy == "fsdp":
            raise DataError(
                "--quant-aware rounds whole weights, which FSDP shards over the processes: use the default "
                "DDP (--strategy ddp) or --quant-aware none"
            )
        if self.heldout is not None and not Path(self.heldout).is_file():
            raise DataError(f"--heldout {self.heldout} does not exist (a plain text file)")


def distillation_loss(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    temperature: float,
    alpha: float,
    attention_mask: Any = None,
) -> tuple[Any, Any, Any]:
    """(loss, kl, ce). The KL term covers every real position (the teacher's distribution carries
    information on the prompt's tokens too, as in Minitron's distillation on whole sequences); the label
    term covers the answer's tokens (labels != -100). Without a mask, the KL covers the labelled ones."""
    import torch.nn.functional as F

    s = student_logits[:, :-1, :].float()
    t = teacher_logits[:, :-1, :].float()
    target = labels[:, 1:]
    answer = target != -100
    real = attention_mask[:, 1:].bool() if attention_mask is not None else answer
    if not bool(real.any()):
        zero = s.sum() * 0.0
        return zero, zero, zero
    log_p_student = F.log_softmax(s[real] / temperature, dim=-1)
    log_p_teacher = F.log_softmax(t[real] / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="none").sum(-1).mean()
    kl = kl * temperature**2
    ce = F.cross_entropy(s[answer], target[answer]) if bool(answer.any()) else s.sum() * 0.0
    return alpha * kl + (1.0 - alpha) * ce, kl.detach(), ce.detach()


def teacher_answers(
    teacher: Any, tokenizer: Any, prompts: list[ChatExample], max_new_tokens: int
) -> list[ChatExample]:
    """The teacher's greedy answers to each prompt, as new examples."""
    from model_repo.training.evaluate import generate_local

    answers = generate_local(teacher, tokenizer, prompts, max_new_tokens, "teacher answering prompts")
    kept = [
        ChatExample(e.prompt, a.strip(), e.line) for e, a in zip(prompts, answers, strict=True) if a.strip()
    ]
    if not kept:
        raise DataError("the teacher answered none of the prompts; check --prompts and the teacher model")
    return kept


def run_distill(config: DistillConfig) -> dict[str, Any]:
    config.validate()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from trl import SFTConfig, SFTTrainer

    from model_repo.training.evaluate import load_prompts
    from model_repo.training.progress import ProgressAndMetrics, with_loss_parts

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.student)
    teacher = load_model(config.teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if config.data is not None:
        examples = load_chat_jsonl(config.data)
    else:
        examples = teacher_answers(
            teacher, tokenizer, load_prompts(str(config.prompts)), config.max_new_tokens
        )
        if int(os.environ.get("RANK", "0")) == 0:
            write_chat_jsonl(out / TEACHER_ANSWERS, examples)
    student = load_model(config.student)
    if config.quant_aware == "int4":
        rounded = train_through_rounding(student)
        say_line(f"quantisation-aware: {rounded} projections train through the int4 build's rounding")
    as_finetune = FinetuneConfig(
        model=config.student,
        data="",
        out=config.out,
        method="full",
        epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        seed=config.seed,
        strategy="fsdp" if config.strategy == "fsdp" else "ddp",
    )
    schedule = {"lr_scheduler_type": config.schedule, "warmup_steps": config.warmup_steps}
    progress = ProgressAndMetrics(out, "distilling", show=config.show_progress)
    callbacks: list[Any] = [progress]
    if config.heldout is not None:
        text = read_text(config.heldout, "--heldout", "pass a plain text file")[1]
        callbacks.append(heldout_callback(text, tokenizer, config.eval_every, say_line))
    if config.topk:
        from model_repo.training.distill_topk import train_on_topk

        targets = Path(config.topk_file) if config.topk_file else out / TOPK_FILE
        topk_trainer = train_on_topk(
            config, teacher, student, tokenizer, examples, targets,
            trainer_arguments(as_finetune, out / TRAINER_DIR, **schedule), callbacks,
        )  # fmt: skip
        return _finish(config, topk_trainer, tokenizer, len(examples), callbacks)
    args = SFTConfig(
        **trainer_arguments(as_finetune, out / TRAINER_DIR, **schedule),
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
    )
    parts: dict[str, list[float]] = {"kl": [], "ce": []}
    pairs = hidden_pairs(config.hidden_weight, config.student, teacher, student, say_line)
    if pairs:
        parts["hidden"] = []

    class DistillationTrainer(SFTTrainer):  # type: ignore[misc]
        """SFTTrainer whose loss is the teacher's softened logits mixed with the labels."""

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: Any = False, num_items_in_batch: Any = None
        ) -> Any:
            fields = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
            outputs = model(**fields, output_hidden_states=bool(pairs))
            with torch.no_grad():
                taught = teacher.to(outputs.logits.device)(**fields, output_hidden_states=bool(pairs))
            loss, kl, ce = distillation_loss(
                outputs.logits, taught.logits, inputs["labels"], config.temperature, config.alpha,
                inputs.get("attention_mask"),
            )  # fmt: skip
            parts["kl"].append(float(kl))
            parts["ce"].append(float(ce))
            if pairs:
                mask = inputs.get("attention_mask")
                mask = mask if mask is not None else torch.ones_like(inputs["input_ids"])
                hidden = hidden_state_loss(outputs.hidden_states, taught.hidden_states, pairs, mask)
                parts["hidden"].append(float(hidden.detach()))
                loss = loss + config.hidden_weight * hidden
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            super().log(with_loss_parts(logs, parts), *args, **kwargs)

    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=to_dataset(examples),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    quiet(trainer)
    return _finish(config, trainer, tokenizer, len(examples), callbacks)


def _finish(
    config: DistillConfig, trainer: Any, tokenizer: Any, examples: int, callbacks: list[Any]
) -> dict[str, Any]:
    """Train, then write the student (fp32, merged from every process) and `training.json`."""
    out = Path(config.out)
    result = trainer.train()
    progress = callbacks[0]
    summary = {
        "config": asdict(config),
        "processes": world_size(),
        "examples": examples,
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "losses": [float(r["loss"]) for r in progress.history if "loss" in r],
        "runtime_s": float(result.metrics.get("train_runtime", 0.0)),
        "tokens_seen": int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0),
    }
    for callback in callbacks[1:]:
        summary["heldout_perplexity"] = callback.history
    if config.quant_aware != "none":  # write the rounded weights: what the student learned to be
        summary["rounded_projections"] = keep_rounded(trainer.model)
    state = trainer.accelerator.get_state_dict(trainer.model)
    try:
        _write(config, trainer, tokenizer, state, summary)
    finally:  # the Trainer's scratch folder goes, written or refused
        shutil.rmtree(out / TRAINER_DIR, ignore_errors=True)
    return summary


def _write(config: DistillConfig, trainer: Any, tokenizer: Any, state: Any, summary: dict[str, Any]) -> None:
    """On the main process: the student in fp32, training.json and the student's lineage."""
    import torch

    out = Path(config.out)
    if trainer.accelerator.is_main_process:
        check_finite(state, int(trainer.state.global_step), config.learning_rate)
        final = load_model(config.student)
        final.load_state_dict(state, strict=False)
        final.to(dtype=torch.float32).save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        from model_repo.training.prune import PRUNING_FILE

        lineage = Path(config.student) / PRUNING_FILE
        if lineage.is_file():  # which teacher layers the student holds (a later --hidden-weight run reads it)
            shutil.copyfile(lineage, out / PRUNING_FILE)
