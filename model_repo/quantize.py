"""Weight-only quantisation of an exported model directory: none | int8 | int4.

Chosen for quality: onnxruntime's default dynamic QInt8 (`quantize_dynamic`) quantises activations too and
drops SmolLM2-135M's next-token agreement with fp32 to ~66%, so it is not offered. Instead every MatMul with
a constant weight becomes a `MatMulNBits` (block-wise, weights only, activations stay float):

- int8: 8-bit symmetric, block 16, accuracy_level 4 (int8 compute in the CPU kernel). On SmolLM2 block 32
  kept 95.9% agreement on held-out text but only 91.7% while generating (the gate checks both); block 16
  keeps 96.2% / 96.9% at about 0.9x block 32's speed.
- int4: 4-bit, block 32, accuracy_level 4, each block with its exact float offset (see
  `model_repo.quantize_int4`: onnxruntime's integer zero points dropped SmolLM2's agreement to ~69%),
  every projection but the output one (lm_head, the MatMul producing `logits`, which decides the next
  token directly). Tied to the token embedding (SmolLM2's is), it scores the vocabulary at 4 bits and
  rescores the best TOP_K exactly with the embedding's fp32 rows (`model_repo.rescored_head`); untied,
  it stays at 8 bits, symmetric, in blocks of 32 (the layout of a Q8_0 embedding). A plain 4-bit output
  projection failed the gate on SmolLM2 (82.0% / 85.9%, perplexity +5.1%); rescored it passes.
  SmolLM2 with the 8-bit head, one run: 96.3% / 97.1% agreement, perplexity +0.3%; 115 MB of
  weights read per decode token (an earlier layout with the down projections and the output
  projection at 8 bits in blocks of 16: 132 MB).
  The merged q/k/v output goes to GroupQueryAttention packed, with the rotary embedding done inside
  it (`model_repo.gqa.pack_qkv_with_rotary`): 7 fewer nodes per layer and decode step.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from model_repo.export import save_onnx
from model_repo.gqa import pack_qkv_with_rotary
from model_repo.quantize_int4 import merge_sibling_matmuls, quantize_int4_with_offsets
from model_repo.rescored_head import TOP_K, add_rescoring, tied_table
from model_repo.runtime.contract import ONNX_FILE, TOKENIZER_FILE, GenerationMetadata

METHODS = ("none", "int8", "int4")


class QuantizeError(RuntimeError):
    """Quantisation failed or was asked for something unsupported."""


@dataclass(frozen=True)
class QuantSettings:
    method: str
    bits: int | None
    block_size: int | None
    symmetric: bool | None
    accuracy_level: int | None
    lm_head_bits: int | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


SETTINGS: dict[str, QuantSettings] = {
    "none": QuantSettings("none", None, None, None, None, None),
    "int8": QuantSettings("int8", 8, 16, True, 4, 8),
    "int4": QuantSettings("int4", 4, 32, False, 4, 8),  # symmetric False: per-block float offsets
}
# The output projection of an int4 build: 8 bits, symmetric, blocks of 32 (see the module docs);
# tied to the embedding, 4 bits with integer zero points, its best TOP_K rescored in fp32.
INT4_HEAD = QuantSettings("int8", 8, 32, True, 4, 8)
INT4_RESCORED_HEAD = QuantSettings("int4", 4, 32, False, 4, 4)


@dataclass(frozen=True)
class QuantizeResult:
    model_dir: Path
    settings: QuantSettings
    quantized_matmuls: int
    seconds: float
    # How the output projection was quantised: "8-bit", "4-bit, top 64 rescored in fp32", or "" (none).
    head: str = ""


def _logits_matmul(model: Any) -> str | None:
    """Name of the MatMul that produces the graph output `logits` (through at most a few nodes)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    frontier, seen = ["logits"], set()
    for _ in range(6):
        nxt = []
        for name in frontier:
            node = producers.get(name)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type == "MatMul":
                return str(node.name)
            nxt.extend(node.input)
        frontier = nxt
    return None


def _matmul_nbits(model: Any, bits: int, s: QuantSettings, only: set[str] | None = None) -> Any:
    """Quantise MatMuls with constant weights to `bits`; with `only`, just those nodes."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # The quantizer logs one INFO line per node, which would drown the progress display.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=s.block_size or 32,
        is_symmetric=bool(s.symmetric),
        accuracy_level=s.accuracy_level,
        # nodes_to_include only adds to op_types_to_quantize, so restrict by excluding the others.
        nodes_to_exclude=[n.name for n in model.graph.node if only is not None and n.name not in only],
        op_types_to_quantize=("MatMul",),
    )
    q.process()
    return q.model.model


def quantize_model(
    src_dir: str | Path,
    dst_dir: str | Path,
    method: str,
    progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Write a quantised copy of the model directory `src_dir` (from `export_onnx`) to `dst_dir`."""
    import onnx

    if method not in METHODS:
        raise QuantizeError(f"unknown quantisation {method!r}; choose one of {', '.join(METHODS)}")
    say = progress or (lambda _m: None)
    src, dst = Path(src_dir), Path(dst_dir)
    settings = SETTINGS[method]
    dst.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    meta = GenerationMetadata.load(src)
    count = 0
    head_kind = ""
    if method == "none":
        for name in (ONNX_FILE, ONNX_FILE + ".data"):
            if (src / name).exists():
                shutil.copy2(src / name, dst / name)
    else:
        model = onnx.load(str(src / ONNX_FILE))
        head = _logits_matmul(model)
        head_kind = "" if head is None else f"{settings.lm_head_bits}-bit"
        bits = settings.bits or 8
        if bits == 4:
            say("merging projections that share an input (q/k/v, gate/up)")
            merge_sibling_matmuls(model)
            packed = pack_qkv_with_rotary(model)
            if packed:
                say(f"attention reads the merged q/k/v and rotates it itself ({packed} layers)")
            if head is not None:
                model, head_kind = _quantize_int4_head(model, head, say)
            say(f"quantising the other weights to 4 bits (block {settings.block_size}, exact offsets)")
            quantize_int4_with_offsets(model, settings.accuracy_level or 4)
        else:
            say(f"quantising weights to {bits} bits (MatMulNBits, block {settings.block_size})")
            model = _matmul_nbits(model, bits, settings)
        count = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
        if count == 0:
            raise QuantizeError("no MatMul with a constant weight was found to quantise")
        save_onnx(model, dst / ONNX_FILE)
    shutil.copy2(src / TOKENIZER_FILE, dst / TOKENIZER_FILE)
    replace(meta, quantization=method).save(dst)
    return QuantizeResult(dst, settings, count, time.perf_counter() - t0, head_kind)


def _quantize_int4_head(model: Any, head: str, say: Callable[[str], None]) -> tuple[Any, str]:
    """The int4 build's output projection (see the module docs): (the model, what the head became)."""
    node = next(n for n in model.graph.node if n.name == head)
    logits = node.output[0]
    table = tied_table(model, head)
    if table is None:
        say("quantising the output projection to 8 bits (blocks of 32; not tied to the embedding)")
        return _matmul_nbits(model, 8, INT4_HEAD, only={head}), "8-bit"
    say(f"output projection: 4 bits for every token, the best {TOP_K} rescored with the fp32 embedding")
    model = _matmul_nbits(model, 4, INT4_RESCORED_HEAD, only={head})
    add_rescoring(model, logits, table, TOP_K)
    return model, f"4-bit, top {TOP_K} rescored in fp32"
