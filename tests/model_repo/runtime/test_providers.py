"""Choosing onnxruntime's execution provider, and refusing to run on another one than asked
(onnxruntime falls back to the CPU silently when a GPU provider does not load)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from model_repo.runtime.contract import EngineError, GenerationMetadata, past_names
from model_repo.runtime.engine import Engine
from model_repo.runtime.providers import (
    PROVIDER_ENV,
    TRT_CACHE_ENV,
    available_providers,
    check_providers,
    chosen_provider,
    provider_list,
)


def test_asking_for_cuda_where_it_does_not_load_fails_with_the_reason(tiny_llama_export: Path) -> None:
    """This machine's onnxruntime has no CUDA: onnxruntime itself would carry on on the CPU; the engine
    refuses, so Triton marks the model not ready instead of serving 50x slower."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback cannot be provoked here")
    meta = GenerationMetadata.load(tiny_llama_export)
    with pytest.raises(EngineError, match=r"asked for CUDAExecutionProvider but onnxruntime runs .*CPU"):
        Engine.load(tiny_llama_export, providers=provider_list("cuda", meta), num_threads=1)


def test_the_cpu_provider_runs_when_asked() -> None:
    check_providers(["CPUExecutionProvider"], ["CPUExecutionProvider"])
    check_providers(
        [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"],
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )


def test_the_pods_environment_overrides_the_models_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROVIDER_ENV, raising=False)
    assert chosen_provider("auto") == "auto"
    monkeypatch.setenv(PROVIDER_ENV, "CUDA")
    assert chosen_provider("cpu") == "cuda"
    monkeypatch.setenv(PROVIDER_ENV, "rocm")
    with pytest.raises(EngineError, match=rf"{PROVIDER_ENV}='rocm': choose one of auto, cpu, cuda, tensorrt"):
        chosen_provider("auto")


def test_auto_never_picks_tensorrt_and_ends_with_the_cpu() -> None:
    provs = available_providers()
    assert provs[-1] == "CPUExecutionProvider" and "TensorrtExecutionProvider" not in provs


def test_tensorrt_is_opt_in_with_its_engine_cache_and_a_profile_for_every_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TensorRT gets a persistent engine cache (the stack mounts a volume there) and min/opt/max shapes
    for every dynamic input, from one token to the whole context and from one to max_batch sequences."""
    monkeypatch.setenv(TRT_CACHE_ENV, "/var/cache/trt")
    meta = GenerationMetadata("llama", 2, 2, 16, 100, 512, (1,), 1, dtype="float16")
    provs = provider_list("tensorrt", meta, device_id=3, max_batch=4)
    assert [p if isinstance(p, str) else p[0] for p in provs] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    trt = provs[0][1]
    assert trt["device_id"] == 3 and trt["trt_engine_cache_enable"] and trt["trt_fp16_enable"]
    assert trt["trt_engine_cache_path"] == "/var/cache/trt"
    cache_inputs = [n for pair in past_names(2) for n in pair]
    for key, batch, tokens, past in (
        ("trt_profile_min_shapes", 1, 1, 0),
        ("trt_profile_opt_shapes", 4, 1, 256),
        ("trt_profile_max_shapes", 4, 512, 512),
    ):
        shapes = dict(item.split(":") for item in trt[key].split(","))
        assert shapes["input_ids"] == f"{batch}x{tokens}"
        assert shapes["attention_mask"] == f"{batch}x{past + tokens}"
        assert all(shapes[name] == f"{batch}x2x{past}x16" for name in cache_inputs)
    assert provider_list("cpu", meta) == ["CPUExecutionProvider"]
    assert provider_list("cuda", meta, device_id=1)[0] == ("CUDAExecutionProvider", {"device_id": 1})
