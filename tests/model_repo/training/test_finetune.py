"""Fine-tuning on the tiny model (seconds): the loss falls, only answer tokens are learnt, the output is a
checkpoint `tritonform build` accepts (LoRA merged, adapter beside it), and metrics are written; two
torchrun processes give the same loss curve as one with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repo.checkpoint import inspect_checkpoint
from model_repo.training.finetune import ADAPTER_DIR, SUMMARY_FILE, FinetuneConfig, per_device_batch
from model_repo.training.launch import run
from model_repo.training.progress import read_metrics
from tests.model_repo.training.facts import write_facts


def test_lora_finetune_lowers_the_loss_and_writes_a_merged_checkpoint(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "ft"
    config = FinetuneConfig(
        model=str(tiny_llama_checkpoint), data=str(write_facts(tmp_path / "facts.jsonl")), out=str(out),
        method="lora", max_steps=12, learning_rate=5e-3, batch_size=4, show_progress=False,
    )  # fmt: skip
    summary = run("finetune", config)
    assert summary["steps"] == 12 and summary["processes"] == 1
    assert summary["losses"][-1] < summary["losses"][0]
    inspect_checkpoint(out)  # what `tritonform build --model OUT` checks first
    assert (out / ADAPTER_DIR / "adapter_config.json").is_file()
    assert json.loads((out / SUMMARY_FILE).read_text())["steps"] == 12
    steps = [m for m in read_metrics(out) if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 13))
    assert all(m["tokens_per_s"] > 0 for m in steps)
    merged, base = (
        load_file(str(out / "model.safetensors")),
        load_file(str(tiny_llama_checkpoint / "model.safetensors")),
    )
    assert set(merged) == set(base)  # no adapter weights left in the model, same layout
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert any("q_proj" in k for k in changed) and not any("norm" in k for k in changed)


def test_the_loss_counts_answer_tokens_only(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    """TRL's prompt-completion collator masks the prompt (system, question, assistant header)."""
    from trl import SFTConfig, SFTTrainer

    from model_repo.training.data import load_chat_jsonl
    from model_repo.training.finetune import load_model, load_tokenizer, to_dataset

    examples = load_chat_jsonl(write_facts(tmp_path / "facts.jsonl"))[:2]
    tok = load_tokenizer(tiny_llama_checkpoint)
    trainer = SFTTrainer(
        model=load_model(tiny_llama_checkpoint),
        args=SFTConfig(output_dir=str(tmp_path / "t"), report_to=[], use_cpu=True, completion_only_loss=True),
        train_dataset=to_dataset(examples),
        processing_class=tok,
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = [t for t in batch["labels"][0].tolist() if t != -100]
    assert tok.decode(labels) == examples[0].answer + "<|im_end|>\n"
    prompt = tok.apply_chat_template(list(examples[0].prompt), add_generation_prompt=True, tokenize=False)
    assert tok.decode(batch["input_ids"][0]).startswith(prompt)  # the serving-time rendering


def test_the_global_batch_must_split_evenly() -> None:
    from model_repo.training.data import DataError

    assert per_device_batch(8, 2) == 4
    with pytest.raises(DataError, match="multiple of 3"):
        per_device_batch(8, 3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": float("inf")}, "--epochs must be a finite number"),
        ({"epochs": float("nan")}, "--epochs must be a finite number"),
        ({"epochs": -1.0}, "--epochs must be a finite number of passes, 0 or more"),
        ({"max_steps": -5}, "--max-steps must be a positive number of steps, or -1"),
        ({"learning_rate": -1.0}, "--lr must be a positive number"),
        ({"learning_rate": 0.0}, "--lr must be a positive number"),
        ({"lora_rank": 0}, "--lora-rank must be at least 1"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
    ],
)
def test_bad_settings_are_named_before_anything_loads(changes: dict[str, object], message: str) -> None:
    from model_repo.training.data import DataError

    with pytest.raises(DataError, match=message):
        FinetuneConfig(**{"model": "m", "data": "d", "out": "o", **changes}).validate()  # type: ignore[arg-type]


def test_a_run_that_diverges_writes_no_checkpoint(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    """Weights that became NaN or infinite are refused at the end (never saved, never reported done)."""
    data = write_facts(tmp_path / "facts.jsonl")
    out = tmp_path / "diverged"
    config = FinetuneConfig(
        model=str(tiny_llama_checkpoint), data=str(data), out=str(out), method="full", max_steps=3,
        learning_rate=1e38, batch_size=4, show_progress=False,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"training diverged: .* NaN or infinite values after 3 steps"):
        run("finetune", config)
    assert not (out / "model.safetensors").exists() and not (out / SUMMARY_FILE).exists()


@pytest.mark.slow
def test_two_processes_give_the_same_loss_curve_as_one(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    """torchrun with 2 gloo processes (batch 2 each) vs one process (batch 4), same data order: every
    step's loss agrees within 1e-4 relative (float32 reduction order is the only difference), and so do
    the trained weights."""
    import torch
    from safetensors.torch import load_file

    data = str(write_facts(tmp_path / "facts.jsonl"))
    curves = {}
    for nproc in (1, 2):
        config = FinetuneConfig(
            model=str(tiny_llama_checkpoint), data=data, out=str(tmp_path / f"n{nproc}"), method="full",
            max_steps=6, learning_rate=1e-3, batch_size=4, show_progress=False,
        )  # fmt: skip
        curves[nproc] = run("finetune", config, nproc=nproc)
    assert curves[2]["processes"] == 2 and curves[1]["processes"] == 1
    assert len(curves[1]["losses"]) == len(curves[2]["losses"]) == 6
    assert curves[2]["losses"] == pytest.approx(curves[1]["losses"], rel=1e-4)
    assert curves[1]["losses"][-1] < curves[1]["losses"][0]
    one, two = (
        load_file(str(tmp_path / "n1" / "model.safetensors")),
        load_file(str(tmp_path / "n2" / "model.safetensors")),
    )
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)


@pytest.mark.slow
def test_fsdp_shards_over_two_processes_and_writes_one_checkpoint(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """`--strategy fsdp` on 2 gloo processes: the run completes, its first step sees the same batch and
    weights as one process (same loss within 1e-4), and the gathered LoRA update is merged into one
    checkpoint that loads."""
    from transformers import AutoModelForCausalLM

    data = str(write_facts(tmp_path / "facts.jsonl"))
    common = {"model": str(tiny_llama_checkpoint), "data": data, "method": "lora", "max_steps": 2,
              "learning_rate": 1e-3, "batch_size": 4, "show_progress": False}  # fmt: skip
    single = run("finetune", FinetuneConfig(out=str(tmp_path / "one"), **common))  # type: ignore[arg-type]
    sharded = run("finetune", FinetuneConfig(out=str(tmp_path / "fsdp"), strategy="fsdp", **common), nproc=2)  # type: ignore[arg-type]
    assert sharded["processes"] == 2 and sharded["config"]["strategy"] == "fsdp"
    assert sharded["losses"][0] == pytest.approx(single["losses"][0], rel=1e-4)
    inspect_checkpoint(tmp_path / "fsdp")
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "fsdp"))


def test_examples_past_max_length_are_counted_not_cut_silently(tiny_llama_checkpoint: Path) -> None:
    from model_repo.training.data import ChatExample, DataError
    from model_repo.training.finetune import check_lengths, load_tokenizer

    tok = load_tokenizer(tiny_llama_checkpoint)
    short = ChatExample(({"role": "user", "content": "hi"},), "hello", 1)
    long_answer = ChatExample(({"role": "user", "content": "hi"},), "word " * 300, 2)
    long_prompt = ChatExample(({"role": "user", "content": "word " * 300},), "ok", 3)
    said: list[str] = []
    check_lengths(tok, [short, long_answer, long_prompt], 128, said.append)
    assert said == [
        "warning: 2 of 3 examples are longer than --max-length 128 tokens (first: line 2): 1 answers cut "
        "short, 1 skipped (the prompt alone fills it); raise --max-length to learn them whole"
    ]
    said.clear()
    check_lengths(tok, [short], 128, said.append)
    assert said == []
    with pytest.raises(DataError, match="every example's prompt is 128 tokens or longer"):
        check_lengths(tok, [long_prompt], 128, said.append)
