"""The model directory contract between `tritonform build` and the runtime (standard library only).

A model directory (written by `model_repo.build`, shipped as `<model>/1/<engine_subdir>/`):

    model.onnx (+ model.onnx.data)   inputs  input_ids[B,S] int64, attention_mask[B,P+S] int64,
                                             position_ids[B,S] int64,
                                             logits_to_keep[K] int64 (positions within S whose
                                               logits to compute; optional, older builds lack it),
                                             past_key_values.{i}.key / .value [B,kv_heads,P,hd] f32
                                               (f16 when generation.json's dtype is "float16")
                                     outputs logits[B,K,V] f32, present.{i}.key / .value [B,kv_heads,P+S,hd]
                                     generation.json's kv_layout says how a batch pads its cache:
                                       "left"  rows end at the last column, attention_mask zeros padding
                                       "right" (GroupQueryAttention) rows start at column 0; the mask's
                                               ones give each row's length, its width the buffer's, and
                                               present may be bound to past's buffer (updated in place)
    tokenizer.json                   a `tokenizers` fast tokenizer (no bos added on encode)
    generation.json                  `GenerationMetadata` below

The gateway reads tokenizer.json and generation.json too, so this module imports nothing beyond the
standard library: serving can use it without the engine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

METADATA_FILE = "generation.json"
TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"
LOGITS_TO_KEEP = "logits_to_keep"
# How a batch's KV cache is laid out (GenerationMetadata.kv_layout), which the graph's attention decides:
KV_LAYOUT_LEFT = "left"  # MultiHeadAttention or plain attention: left-padded rows, mask zeros padding
KV_LAYOUT_RIGHT = "right"  # GroupQueryAttention (model_repo/gqa.py): right-padded rows, updated in place
METADATA_FORMAT = 1


class EngineError(RuntimeError):
    """A model directory or request the engine cannot work with; the message says what to fix."""


def past_names(num_layers: int) -> list[tuple[str, str]]:
    """The graph's cache inputs, (key, value) per layer."""
    return [(f"past_key_values.{i}.key", f"past_key_values.{i}.value") for i in range(num_layers)]


def present_names(num_layers: int) -> list[tuple[str, str]]:
    """The graph's cache outputs, (key, value) per layer."""
    return [(f"present.{i}.key", f"present.{i}.value") for i in range(num_layers)]


@dataclass(frozen=True)
class GenerationMetadata:
    """What the engine needs to know about an exported model; stored as `generation.json`."""

    architecture: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    bos_token_id: int | None = None
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    onnx_file: str = ONNX_FILE
    quantization: str = "none"
    kv_layout: str = "left"  # KV_LAYOUT_LEFT or KV_LAYOUT_RIGHT: how DecodeBatch stacks the cache
    dtype: str = "float32"  # the weights' and KV cache's float type ("float32" or "float16"); logits are fp32
    format_version: int = METADATA_FORMAT

    def save(self, model_dir: Path) -> Path:
        """Write `generation.json` into `model_dir`; returns its path."""
        path = Path(model_dir) / METADATA_FILE
        data = asdict(self)
        data["eos_token_ids"] = list(self.eos_token_ids)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, model_dir: Path) -> GenerationMetadata:
        """Read `generation.json` from `model_dir`; `EngineError` if it is missing or of another format."""
        path = Path(model_dir) / METADATA_FILE
        if not path.is_file():
            raise EngineError(f"{path} not found: build the model directory with `tritonform build`")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != METADATA_FORMAT:
            raise EngineError(f"{path}: unsupported format_version {data.get('format_version')!r}")
        data["eos_token_ids"] = tuple(int(t) for t in data["eos_token_ids"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
