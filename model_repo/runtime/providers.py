"""Which onnxruntime execution provider runs the model, with what options, and a check that it really does.

The choice ("auto", "cpu", "cuda" or "tensorrt") comes from the model's config (`execution_provider`)
unless the pod's environment names one ($TRITONFORM_EXECUTION_PROVIDER, set by the stack from
`triton.executionProvider`: CUDA by default on GPU nodes, TensorRT opt-in). onnxruntime falls back to the
CPU without a word when a GPU provider's libraries do not load, so `check_providers` compares what was
asked with what the session runs and fails the model's readiness with the reason.
"""

from __future__ import annotations

import os
from typing import Any

from .contract import EngineError, GenerationMetadata, past_names

PROVIDER_ENV = "TRITONFORM_EXECUTION_PROVIDER"
TRT_CACHE_ENV = "TRITONFORM_TRT_ENGINE_CACHE"  # where TensorRT keeps its built engines (a writable volume)
DEFAULT_TRT_CACHE = "/tmp/tritonform-trt-cache"
CHOICES = ("auto", "cpu", "cuda", "tensorrt")
NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def chosen_provider(configured: str) -> str:
    """The provider to use: $TRITONFORM_EXECUTION_PROVIDER when set, else the model config's."""
    choice = (os.environ.get(PROVIDER_ENV) or configured or "auto").strip().lower()
    if choice not in CHOICES:
        where = PROVIDER_ENV if os.environ.get(PROVIDER_ENV) else "the model's execution_provider"
        raise EngineError(f"{where}={choice!r}: choose one of {', '.join(CHOICES)}")
    return choice


def available_providers(prefer_gpu: bool = True) -> list[str]:
    """Execution providers onnxruntime offers here, best first: CUDA when present, CPU always last.
    TensorRT is never picked automatically: its engines take minutes to build on first load (opt in)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    chosen = ["CUDAExecutionProvider"] if prefer_gpu and "CUDAExecutionProvider" in have else []
    return [*chosen, "CPUExecutionProvider"]


def tensorrt_profiles(meta: GenerationMetadata, max_batch: int) -> dict[str, str]:
    """TensorRT's shape profiles (min, opt, max) for every dynamic input: one token to a whole context,
    one sequence to `max_batch`. Without them TensorRT rebuilds an engine whenever a shape is new."""
    ctx = meta.max_context
    cache = [name for pair in past_names(meta.num_layers) for name in pair]
    h, d = meta.num_kv_heads, meta.head_dim

    def profile(batch: int, tokens: int, past: int) -> str:
        dims = {
            "input_ids": f"{batch}x{tokens}",
            "attention_mask": f"{batch}x{past + tokens}",
            "position_ids": f"{batch}x{tokens}",
            "logits_to_keep": f"{tokens}",
            **{name: f"{batch}x{h}x{past}x{d}" for name in cache},
        }
        return ",".join(f"{name}:{shape}" for name, shape in dims.items())

    return {
        "trt_profile_min_shapes": profile(1, 1, 0),
        "trt_profile_opt_shapes": profile(max_batch, 1, ctx // 2),
        "trt_profile_max_shapes": profile(max_batch, ctx, ctx),
    }


def provider_list(choice: str, meta: GenerationMetadata, device_id: int = 0, max_batch: int = 8) -> list[Any]:
    """onnxruntime's `providers` argument for `choice` (see `chosen_provider`)."""
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if choice == "tensorrt":
        cache = os.environ.get(TRT_CACHE_ENV) or DEFAULT_TRT_CACHE
        trt = {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            "trt_fp16_enable": meta.dtype == "float16",
            **tensorrt_profiles(meta, max_batch),
        }
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]
    return [
        (p, {"device_id": device_id}) if p != "CPUExecutionProvider" else p for p in available_providers()
    ]


def provider_name(entry: Any) -> str:
    """The provider's name in an onnxruntime `providers` entry (a name or a (name, options) pair)."""
    return str(entry if isinstance(entry, str) else entry[0])


def check_providers(asked: list[Any], running: list[str]) -> None:
    """Raise `EngineError` unless the session runs the provider asked for first (onnxruntime silently
    drops a provider whose libraries fail to load and carries on with the next one)."""
    want = provider_name(asked[0]) if asked else "CPUExecutionProvider"
    if running[:1] == [want]:
        return
    got = running[0] if running else "nothing"
    raise EngineError(
        f"asked for {want} but onnxruntime runs this model on {got}: the provider did not load "
        "(is onnxruntime-gpu installed, do its CUDA/cuDNN/TensorRT libraries match, does the pod see a GPU "
        "(nvidia-smi)?). Fix the image or node, or set the stack's triton.executionProvider to one that runs."
    )
