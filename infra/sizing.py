"""Will a model fit its GPUs, and how fast can it decode there: the estimates `tritonform plan` prints.

Plain arithmetic on a decoder-only transformer's shape (Llama, Qwen2, Mistral: grouped-query attention,
gated MLP), standard library only (with model_repo/precision.py, the one table of bytes per precision the
build uses too), so `scripts/gpu-check` can import it on a GPU machine without the project's dependencies
and hold its predictions against `torch.cuda.max_memory_allocated`.

Memory per GPU of one replica (tensor parallel size `tp` splits weights, KV heads and MLP columns):
- weights: parameters x bytes per parameter / tp (int8/int4 keep the embedding tables at 16 bits, as
  weight-only quantisers do);
- KV cache: 2 (K and V) x layers x KV heads x head size x bytes x context x concurrent sequences / tp
  (KV heads are replicated when tp exceeds them);
- activations: the largest transient of one forward over a prefill chunk (the gated MLP's four
  intermediate-wide tensors and a few hidden-wide ones per token) plus the last tokens' fp32 logits;
- runtime: a fixed allowance for the CUDA context, kernels and library workspaces, plus a fraction of
  the above for allocator fragmentation.
A GPU fits when the sum stays within USABLE_FRACTION of its memory.

Decode throughput: each step reads every weight once and each sequence's KV cache, so with peak memory
bandwidth B and achieved fraction `efficiency`, one replica makes `concurrency` tokens per step at
step time = bytes read per GPU / (B x efficiency). Compute limits at large batches are not modelled: the
figure is an upper estimate for memory-bound decoding, and is labelled as one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model_repo.precision import PRECISIONS as _TABLE
from model_repo.precision import PrecisionName

# One table of precisions for the build and the plan: model_repo/precision.py (standard library only).
Precision = PrecisionName
PRECISIONS: tuple[Precision, ...] = tuple(p.name for p in _TABLE.values())
BYTES_PER_PARAMETER: dict[str, float] = {name: p.weight_bytes for name, p in _TABLE.items()}
GIB = 1024**3
# A part sold as N GB reports ~97-98% of N GiB to CUDA; keep a little more back for the runtime's pools.
USABLE_FRACTION = 0.95
# CUDA context, kernel images, cuBLAS/cuDNN workspaces: measured 0.5-1.5 GiB across runtimes.
RUNTIME_FIXED_GIB = 1.5
FRAGMENTATION = 0.05
# Tokens one prefill step processes at most (TensorRT-LLM's default max_num_tokens).
PREFILL_TOKEN_BUDGET = 8192
# Share of the datasheet bandwidth a decode step reaches (published decode kernels reach 60-80%).
BANDWIDTH_EFFICIENCY = 0.7
# Sequences are on average this far into their context while decoding at full load.
AVERAGE_CONTEXT_FILL = 0.5


class ModelShapeError(ValueError):
    """A model description lacks a number the estimate needs; the message names it."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory and bandwidth depend on."""

    name: str
    layers: int
    hidden_size: int
    intermediate_size: int
    attention_heads: int
    kv_heads: int
    vocab_size: int
    head_dim: int = 0  # 0: hidden_size / attention_heads
    tied_embeddings: bool = False
    parameters: float = 0.0  # 0: counted from the shape

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.attention_heads

    @property
    def embedding_parameters(self) -> int:
        tables = 1 if self.tied_embeddings else 2
        return tables * self.vocab_size * self.hidden_size

    @property
    def parameter_count(self) -> float:
        """Parameters as given, else counted: embeddings, attention and gated-MLP matrices, norms."""
        if self.parameters:
            return self.parameters
        q = self.attention_heads * self.head_size
        kv = self.kv_heads * self.head_size
        attention = self.hidden_size * (q + 2 * kv) + q * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        per_layer = attention + mlp + 2 * self.hidden_size
        return float(self.embedding_parameters + self.layers * per_layer + self.hidden_size)


def shape_from_config(config: dict[str, Any], name: str = "checkpoint") -> ModelShape:
    """A shape from a Hugging Face `config.json` (Llama, Qwen2, Mistral and their kin)."""
    keys = {
        "layers": "num_hidden_layers",
        "hidden_size": "hidden_size",
        "intermediate_size": "intermediate_size",
        "attention_heads": "num_attention_heads",
        "vocab_size": "vocab_size",
    }
    text = config.get("text_config")
    if isinstance(text, dict) and "num_hidden_layers" not in config:
        config = text
    missing = [key for key in keys.values() if not isinstance(config.get(key), int)]
    if missing:
        raise ModelShapeError(
            f"{name}: config.json lacks {', '.join(missing)}; give the model's numbers in the stack's "
            "`model:` block instead (layers, hiddenSize, intermediateSize, attentionHeads, kvHeads, "
            "vocabSize)"
        )
    values = {field: int(config[key]) for field, key in keys.items()}
    return ModelShape(
        name=name,
        kv_heads=int(config.get("num_key_value_heads") or values["attention_heads"]),
        head_dim=int(config.get("head_dim") or 0),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        **values,
    )


def shape_from_config_file(path: Path) -> ModelShape:
    """`shape_from_config` for a file on disk; a missing or unreadable file is a ModelShapeError."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelShapeError(
            f"{path} does not exist; point model.configJson at a checkpoint's config.json"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelShapeError(f"{path} is not a readable JSON config ({exc})") from None
    if not isinstance(config, dict):
        raise ModelShapeError(f"{path} is not a JSON object")
    return shape_from_config(config, name=path.parent.name or str(path))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one GPU of a replica needs, by part (GiB), and what it has."""

    weights_gib: float
    kv_cache_gib: float
    activations_gib: float
    runtime_gib: float
    gpu_memory_gib: float
    tensor_parallel: int

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.kv_cache_gib + self.activations_gib + self.runtime_gib

    @property
    def usable_gib(self) -> float:
        return self.gpu_memory_gib * USABLE_FRACTION

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.usable_gib

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()},
            "total_gib": round(self.total_gib, 2),
            "usable_gib": round(self.usable_gib, 2),
            "fits": self.fits,
        }

    def summary(self) -> str:
        return (
            f"{self.total_gib:.1f} GiB per GPU (weights {self.weights_gib:.1f} + KV cache "
            f"{self.kv_cache_gib:.1f} + activations {self.activations_gib:.1f} + runtime "
            f"{self.runtime_gib:.1f}) of {self.usable_gib:.1f} usable on a {self.gpu_memory_gib:g} GiB GPU"
            + (f", tensor parallel {self.tensor_parallel}" if self.tensor_parallel > 1 else "")
        )


def weight_bytes(shape: ModelShape, precision: str) -> float:
    """All weights at `precision` (int8/int4 keep the embedding tables at 16 bits)."""
    per = BYTES_PER_PARAMETER[precision]
    if precision in ("int8", "int4"):
        embeddings = min(float(shape.embedding_parameters), shape.parameter_count)
        return embeddings * 2.0 + (shape.parameter_count - embeddings) * per
    return shape.parameter_count * per


def kv_bytes_per_token(shape: ModelShape, precision: str, tensor_parallel: int = 1) -> float:
    """K and V of one token across all layers, on one GPU of `tensor_parallel`, in `precision`'s
    activation type."""
    kv_bytes = _TABLE[precision].activation_bytes
    heads = max(1, math.ceil(shape.kv_heads / tensor_parallel))
    return 2.0 * shape.layers * heads * shape.head_size * kv_bytes


def activation_bytes(
    shape: ModelShape, precision: str, tokens: int, sequences: int, tensor_parallel: int = 1
) -> float:
    """The largest transient of one forward over `tokens` tokens (of `sequences` sequences) on one GPU."""
    act = _TABLE[precision].activation_bytes
    per_token = (4 * shape.intermediate_size / tensor_parallel + 4 * shape.hidden_size) * act
    logits = sequences * shape.vocab_size * 4.0
    return tokens * per_token + logits


def estimate_memory(
    shape: ModelShape,
    precision: str,
    context_length: int,
    concurrency: int,
    gpu_memory_gib: float,
    tensor_parallel: int = 1,
    compute_precision: str | None = None,
) -> MemoryEstimate:
    """Memory per GPU for a replica holding `concurrency` sequences of `context_length` tokens;
    `compute_precision` is the activations' and KV cache's when it is not `precision`'s (default)."""
    compute = compute_precision or precision
    weights = weight_bytes(shape, precision) / tensor_parallel
    kv = kv_bytes_per_token(shape, compute, tensor_parallel) * context_length * concurrency
    prefill = min(context_length * concurrency, max(PREFILL_TOKEN_BUDGET, context_length))
    activations = activation_bytes(shape, compute, prefill, concurrency, tensor_parallel)
    runtime = RUNTIME_FIXED_GIB * GIB + FRAGMENTATION * (weights + kv + activations)
    return MemoryEstimate(
        weights_gib=weights / GIB,
        kv_cache_gib=kv / GIB,
        activations_gib=activations / GIB,
        runtime_gib=runtime / GIB,
        gpu_memory_gib=gpu_memory_gib,
        tensor_parallel=tensor_parallel,
    )


@dataclass(frozen=True)
class Throughput:
    """Estimated decode speed of one replica at full load, with the inputs it came from."""

    tokens_per_second: float
    step_ms: float
    bytes_per_step_gib: float
    batch: int
    bandwidth_gb_s: float
    efficiency: float
    average_context: int

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def estimate_throughput(
    shape: ModelShape,
    precision: str,
    context_length: int,
    concurrency: int,
    bandwidth_gb_s: float,
    tensor_parallel: int = 1,
    efficiency: float = BANDWIDTH_EFFICIENCY,
    compute_precision: str | None = None,
) -> Throughput:
    """Tokens per second one replica decodes with `concurrency` sequences in flight (memory-bound);
    `compute_precision` as in `estimate_memory`."""
    average_context = int(context_length * AVERAGE_CONTEXT_FILL)
    weights = weight_bytes(shape, precision) / tensor_parallel
    kv = (
        kv_bytes_per_token(shape, compute_precision or precision, tensor_parallel)
        * average_context
        * concurrency
    )
    step_s = (weights + kv) / (bandwidth_gb_s * 1e9 * efficiency)
    return Throughput(
        tokens_per_second=concurrency / step_s,
        step_ms=step_s * 1000,
        bytes_per_step_gib=(weights + kv) / GIB,
        batch=concurrency,
        bandwidth_gb_s=bandwidth_gb_s,
        efficiency=efficiency,
        average_context=average_context,
    )
