"""Supervised fine-tuning with TRL's `SFTTrainer` (LoRA through PEFT, or all weights).

The data is OpenAI's chat format; each conversation becomes a conversational prompt-completion example
(the messages before the last assistant answer, and that answer), so TRL renders both with the
checkpoint's own chat template exactly as the gateway renders a request at serving time
(`add_generation_prompt=True` for the prompt) and computes the loss on the answer's tokens only (its
closing `<|im_end|>` included, so the model learns to stop).

The output folder is a Hugging Face checkpoint `tritonform build --model DIR` takes as is: LoRA is merged
into the weights and the adapter kept beside them in `adapter/`; `metrics.jsonl` holds every step's loss
and throughput, `training.json` the run's settings and summary.

Run in one process, or as one of N torchrun workers (`launch.py`): the Trainer picks up the process
group from torchrun's environment (gloo on CPU, NCCL on GPU), DDP by default, FSDP on request.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from model_repo.training.data import ChatExample, DataError, load_chat_jsonl

Method = Literal["lora", "full"]
Strategy = Literal["ddp", "fsdp"]
ADAPTER_DIR = "adapter"
SUMMARY_FILE = "training.json"
TRAINER_DIR = ".trainer"  # the Trainer's scratch folder inside the output, removed at the end


class TrainingDiverged(RuntimeError):
    """The trained weights hold NaN or infinite values: nothing is written."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a fine-tuning run needs; plain values, so it travels to torchrun workers as JSON."""

    model: str
    data: str
    out: str
    method: Method = "lora"
    epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float | None = None  # None: 2e-4 for LoRA, 2e-5 for full
    batch_size: int = 8  # the global batch: split evenly over the processes
    lora_rank: int = 16
    lora_alpha: int = 32
    max_length: int = 512
    seed: int = 0
    strategy: Strategy = "ddp"
    show_progress: bool = True

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.method == "lora" else 2e-5

    def validate(self) -> None:
        if self.method not in ("lora", "full"):
            raise DataError(f"unknown method {self.method!r}; use --lora or --full")
        if self.strategy not in ("ddp", "fsdp"):
            raise DataError(f"unknown strategy {self.strategy!r}; use ddp or fsdp")
        check_schedule(self.epochs, self.max_steps, self.batch_size, self.learning_rate)
        if self.lora_rank < 1 or self.lora_alpha < 1:
            raise DataError(f"--lora-rank must be at least 1 (got {self.lora_rank})")
        if self.max_length < 2:
            raise DataError(f"--max-length must be at least 2 tokens (got {self.max_length})")


def check_schedule(epochs: float, max_steps: int, batch_size: int, learning_rate: float | None) -> None:
    """The settings every training run shares, checked before anything loads: `DataError` saying which."""
    if not math.isfinite(epochs) or epochs < 0:
        raise DataError(f"--epochs must be a finite number of passes, 0 or more (got {epochs})")
    if max_steps < 1 and max_steps != -1:
        raise DataError(f"--max-steps must be a positive number of steps, or -1 for none (got {max_steps})")
    if epochs == 0 and max_steps == -1:
        raise DataError("give a positive --epochs or --max-steps")
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1 (got {batch_size})")
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise DataError(f"--lr must be a positive number, e.g. 1e-4 (got {learning_rate})")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def per_device_batch(global_batch: int, processes: int) -> int:
    """The global batch split over the processes; it must divide evenly (same batch, same curve)."""
    if global_batch % processes:
        raise DataError(
            f"--batch-size {global_batch} does not split evenly over {processes} processes; "
            f"choose a multiple of {processes}"
        )
    return global_batch // processes


def to_dataset(examples: list[ChatExample]) -> Any:
    """Conversational prompt-completion rows for TRL."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": list(e.prompt), "completion": [{"role": "assistant", "content": e.answer}]}
            for e in examples
        ]
    )


def trainer_arguments(config: FinetuneConfig, output_dir: Path, **extra: Any) -> dict[str, Any]:
    """The `TrainingArguments` fields every training step here shares (distillation too)."""
    import torch

    on_gpu = torch.cuda.is_available()
    args: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": per_device_batch(config.batch_size, world_size()),
        "gradient_accumulation_steps": 1,
        "num_train_epochs": config.epochs if config.epochs > 0 else 1.0,
        "max_steps": config.max_steps,
        "learning_rate": config.lr(),
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "logging_steps": 1,
        "logging_first_step": True,
        "logging_nan_inf_filter": False,  # a NaN loss is shown as NaN (a diverged run is never saved)
        "save_strategy": "no",
        "report_to": [],
        "seed": config.seed,
        "data_seed": config.seed,
        "disable_tqdm": True,
        "use_cpu": not on_gpu,
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        "include_num_input_tokens_seen": True,
        "dataloader_num_workers": 0,
        "average_tokens_across_devices": True,
    }
    if world_size() > 1:
        args["ddp_backend"] = "nccl" if on_gpu else "gloo"
        if config.strategy == "fsdp":
            # shard parameters, gradients and optimizer state across the processes, one unit per layer
            args["fsdp"] = True
            args["fsdp_config"] = {
                "reshard_after_forward": True,
                "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer", "GPT2Block"],
            }
    args.update(extra)
    return args


def lora_config(config: FinetuneConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,  # deterministic steps: the same curve on 1 or N processes
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def load_model(path: str | Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def load_tokenizer(path: str | Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise DataError(f"{path} has no chat template; the chat data cannot be rendered as at serving time")
    return tok


def check_finite(state: dict[str, Any], steps: int, learning_rate: float) -> None:
    """`RuntimeError` when training diverged (a weight is NaN or infinite): such a checkpoint is never
    written, nor reported as a success."""
    import torch

    bad = [name for name, t in state.items() if torch.is_floating_point(t) and not bool(t.isfinite().all())]
    if bad:
        raise TrainingDiverged(
            f"training diverged: {len(bad)} weight tensors (e.g. {bad[0]}) hold NaN or infinite values after "
            f"{steps} steps, so no checkpoint was written; try a lower --lr (this run: {learning_rate:g})"
        )


def save_checkpoint(
    trainer: Any, config: FinetuneConfig, tokenizer: Any, out: Path, summary: dict[str, Any]
) -> None:
    """Gather the trained weights (a collective under FSDP), then write the checkpoint on the main process:
    the base model with the LoRA update merged in, the adapter beside it, the tokenizer, the summary."""
    import torch

    state = trainer.accelerator.get_state_dict(trainer.model)
    if not trainer.accelerator.is_main_process:
        return
    check_finite(state, int(trainer.state.global_step), config.lr())
    model = load_model(config.model)
    if config.method == "lora":
        from peft import get_peft_model

        peft_model = get_peft_model(model, lora_config(config))
        missing, unexpected = peft_model.load_state_dict(state, strict=False)
        if unexpected or any("lora_" in name for name in missing):
            raise RuntimeError(f"trained LoRA weights do not fit the model ({unexpected[:3]}, {missing[:3]})")
        peft_model.save_pretrained(str(out / ADAPTER_DIR))
        model = peft_model.merge_and_unload()
    else:
        model.load_state_dict(state, strict=False)
    model = model.to(dtype=torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")


def quiet(trainer: Any) -> None:
    """Our rich bar and metrics.jsonl replace the Trainer's own printing of every log line."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _ids(rendered: Any) -> list[int]:
    return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)


def check_lengths(
    tokenizer: Any, examples: list[ChatExample], max_length: int, say: Callable[[str], None] | None
) -> None:
    """Examples longer than `max_length` tokens (rendered as at serving time) lose their answer's end, and
    TRL drops those whose prompt alone fills it: `DataError` when none would be learnt, else a warning
    naming how many and the first line, so no answer is cut silently."""
    cut, dropped = [], []
    for e in examples:
        asked = tokenizer.apply_chat_template(list(e.prompt), add_generation_prompt=True, tokenize=True)
        prompt, whole = _ids(asked), _ids(tokenizer.apply_chat_template(e.messages, tokenize=True))
        pairs = zip(prompt, whole, strict=False)
        shared = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(prompt), len(whole)))
        if shared >= max_length:  # the answer starts where the two renderings part, as in TRL
            dropped.append(e.line)
        elif len(whole) > max_length:
            cut.append(e.line)
    if len(dropped) == len(examples):
        raise DataError(
            f"every example's prompt is {max_length} tokens or longer, so no answer would be learnt; raise "
            "--max-length or shorten the prompts"
        )
    if (cut or dropped) and say is not None:
        say(
            f"warning: {len(cut) + len(dropped)} of {len(examples)} examples are longer than --max-length "
            f"{max_length} tokens (first: line {min(cut + dropped)}): {len(cut)} answers cut short, "
            f"{len(dropped)} skipped (the prompt alone fills it); raise --max-length to learn them whole"
        )


def say_line(line: str) -> None:
    print(line, flush=True)


def run_finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune in this process (one of torchrun's workers, or alone); returns the run's summary."""
    config.validate()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trl import SFTConfig, SFTTrainer

    from model_repo.training.progress import ProgressAndMetrics

    out = Path(config.out)
    examples = load_chat_jsonl(config.data)
    tokenizer = load_tokenizer(config.model)
    check_lengths(tokenizer, examples, config.max_length, say_line if is_main_process() else None)
    model = load_model(config.model)
    args = SFTConfig(
        **trainer_arguments(config, out / TRAINER_DIR),
        max_length=config.max_length,
        completion_only_loss=True,
        dataset_num_proc=None,
        packing=False,
    )
    progress = ProgressAndMetrics(out, f"fine-tuning ({config.method})", show=config.show_progress)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(examples),
        processing_class=tokenizer,
        peft_config=lora_config(config) if config.method == "lora" else None,
        callbacks=[progress],
    )
    quiet(trainer)
    result = trainer.train()
    losses = [float(r["loss"]) for r in progress.history if "loss" in r]
    summary = {
        "config": asdict(config),
        "processes": world_size(),
        "examples": len(examples),
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "losses": losses,
        "tokens_seen": int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0),
        "runtime_s": float(result.metrics.get("train_runtime", 0.0)),
    }
    try:
        save_checkpoint(trainer, config, tokenizer, out, summary)
    finally:  # the Trainer's scratch folder goes, written or refused
        shutil.rmtree(out / TRAINER_DIR, ignore_errors=True)
    return summary
