"""Number formats: the one table of precisions (bytes a weight takes, the float type behind each), and
half-precision builds (`tritonform build --dtype float16`).

The table is the source for the build's `--dtype` choices and for `infra/sizing.py`'s memory and bandwidth
arithmetic (`tritonform plan`). This module imports only the standard library at import time, so the
sizing model stays importable on a GPU machine with nothing but PyTorch (`scripts/gpu-check`).

An fp16 build loads the checkpoint in float16 (transformers converts each tensor as it reads it; an fp32
copy of the whole model never exists) and exports that model: weights, activations and the KV cache are
fp16, the logits fp32 (sampling, log-probabilities and the gates read them in numpy). Its quality gate
compares the fp16 ONNX model against PyTorch computing in fp32 over the same weights, one module at a time
(`float32_compute`): the reference needs one module's fp32 copy at a time, not the whole model's, and is
recorded before the export so the torch model is freed before the ONNX session loads. What the gate
measures is then what fp16 computation costs (activation and KV rounding, the fused kernels); the weights'
own rounding to fp16 is checked apart: a weight beyond fp16's range stops the build (`check_half_weights`),
and within it rounding changes a weight by at most 2^-11 of itself (a bf16 checkpoint's weights, whose
mantissa is shorter, convert exactly unless they are below fp16's normal range).

bfloat16 is not offered for the ONNX backend: onnxruntime's CPU provider (1.32), which runs the gates on the
build machine, has no bf16 kernel even for MatMul or Add; TensorRT-LLM (`--backend tensorrt-llm`) serves
bf16 checkpoints as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

PrecisionName = Literal["fp32", "fp16", "bf16", "int8", "int4"]


@dataclass(frozen=True)
class Precision:
    """How a served model stores its numbers: the stack's `model.precision` name, bytes per weight
    (block-wise weight-only quantisation adds a 16-bit scale per 128 weights), bytes per activation and
    KV-cache element on a GPU (16 bits below fp32), and the float type name (None for integer formats)."""

    name: PrecisionName
    weight_bytes: float
    activation_bytes: float
    float_type: str | None


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", 4.0, 4.0, "float32"),
        Precision("fp16", 2.0, 2.0, "float16"),
        Precision("bf16", 2.0, 2.0, "bfloat16"),
        Precision("int8", 1.0 + 2 / 128, 2.0, None),
        Precision("int4", 0.5 + 2 / 128, 2.0, None),
    )
}
# The ONNX build's --dtype choices (float types its gates can run on the build machine's CPU).
DTYPES = tuple(PRECISIONS[name].float_type or "" for name in ("fp32", "fp16"))
# fp16 keeps ~3 significant digits: next-token choices may flip only where the top two logits nearly tie
FP16_MIN_AGREEMENT = 0.99
FP16_MAX_PPL_INCREASE = 0.01
FP16_MAX = 65504.0
REFERENCE = "PyTorch, fp32 compute over the fp16 weights (one module at a time)"


class PrecisionError(RuntimeError):
    """The model cannot be built at the precision asked for; the message says why and what to use."""


def check_half_weights(model: Any, checkpoint: object) -> None:
    """Stop when a weight became infinite in the float16 load (beyond +-65504 in the checkpoint)."""
    import torch

    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise PrecisionError(
            f"{checkpoint}: {len(bad)} weight tensors (first: {bad[0]}) hold values beyond float16's range "
            f"(+-{FP16_MAX:g}); build with --dtype float32, or serve the checkpoint in bf16 with "
            "--backend tensorrt-llm"
        )


@contextmanager
def float32_compute(model: Any) -> Iterator[None]:
    """Run a half-precision torch model in fp32, one module at a time: before each module runs, its own
    parameters are replaced by fp32 copies, and after it the half-precision ones are put back. The
    activations that leave the embedding are then fp32 and stay so, every matmul and norm computes in
    fp32, and at most one module's fp32 copy (the largest: the output projection) exists at once."""
    import torch

    handles = []

    def before(module: Any, _args: Any) -> None:
        saved = {}
        for name, param in module.named_parameters(recurse=False):
            if param.dtype in (torch.float16, torch.bfloat16):
                saved[name] = param.data
                param.data = param.data.float()
        module._half_params = saved

    def after(module: Any, _args: Any, _out: Any) -> None:
        for name, data in module.__dict__.pop("_half_params", {}).items():
            getattr(module, name).data = data

    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
