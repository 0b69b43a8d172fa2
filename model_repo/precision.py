"""Half-precision builds (`tritonform build --dtype float16`): the fp32 export converted to fp16 weights
and an fp16 KV cache, for GPUs, where it halves the memory every decode step reads.

The conversion is onnxruntime's own (`onnxruntime.transformers.float16`): every float initializer and
activation becomes fp16 except the logits, which stay fp32 (sampling, log-probabilities and the gates read
them in numpy) and the ops onnxruntime keeps in fp32 by default for accuracy. The gate compares the fp16
model against the fp32 export it came from, on the same held-out text and decode prompts as quantised
builds, with tighter bounds (FP16_MIN_AGREEMENT, FP16_MAX_PPL_INCREASE): rounding to fp16 should flip
only near-ties.

bfloat16 is not offered for the ONNX backend: onnxruntime's CPU provider, which runs the gates on the
build machine, has no bf16 kernels for MatMul or the fused attention, and its CUDA provider lacks some of
the fused ops in bf16; TensorRT-LLM (`--backend tensorrt-llm`) serves bf16 checkpoints as they are.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from model_repo.export import save_onnx
from model_repo.runtime.contract import ONNX_FILE, TOKENIZER_FILE, GenerationMetadata

DTYPES = ("float32", "float16")
# fp16 keeps ~3 significant digits: next-token choices may flip only where the top two logits nearly tie
FP16_MIN_AGREEMENT = 0.99
FP16_MAX_PPL_INCREASE = 0.01


class PrecisionError(RuntimeError):
    """The conversion failed; the message says which step."""


@dataclass(frozen=True)
class PrecisionResult:
    model_dir: Path
    dtype: str
    seconds: float


def convert_to_float16(src_dir: str | Path, dst_dir: str | Path) -> PrecisionResult:
    """Write an fp16 copy of the fp32 model directory `src_dir` (from `export_onnx`) to `dst_dir`."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, dst = Path(src_dir), Path(dst_dir)
    meta = GenerationMetadata.load(src)
    if meta.dtype != "float32" or meta.quantization != "none":
        raise PrecisionError(f"{src}: fp16 conversion starts from the fp32 export, not a {meta.dtype} one")
    dst.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        model = onnx.load(str(src / ONNX_FILE))
        # the graph is too big for onnx's shape inference over 2 GB; the types it needs are declared
        half = convert_float_to_float16(model, keep_io_types=["logits"], disable_shape_infer=True)
    except Exception as exc:  # the converter raises many types; name the step
        raise PrecisionError(f"fp16 conversion of {src} failed: {type(exc).__name__}: {exc}") from exc
    del model
    save_onnx(half, dst / ONNX_FILE)
    shutil.copy2(src / TOKENIZER_FILE, dst / TOKENIZER_FILE)
    dataclasses.replace(meta, dtype="float16").save(dst)
    return PrecisionResult(dst, "float16", time.perf_counter() - t0)
