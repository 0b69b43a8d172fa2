"""A stack's model must fit one replica's GPUs before any cloud call: `gpusPerReplica` divides the node's
GPUs and is 1 on ONNX, and a model too large for its machine stops with the figures and the cheapest
machine types that hold it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.catalog import GPU_MACHINES
from infra.settings import SettingsError, load_settings
from infra.settings.fit import check_disk, machines_that_fit, replica_estimate
from infra.settings.model import ModelSettings

LLAMA_8B = {
    "name": "llama-8b",
    "layers": 32,
    "hiddenSize": 4096,
    "intermediateSize": 14336,
    "attentionHeads": 32,
    "kvHeads": 8,
    "vocabSize": 128256,
    "tiedEmbeddings": False,
}
LLAMA_70B = {
    **LLAMA_8B,
    "name": "llama-70b",
    "layers": 80,
    "hiddenSize": 8192,
    "intermediateSize": 28672,
    "attentionHeads": 64,
}


def _stack(
    instance: str = "g5.xlarge", gpus: int = 1, model: dict[str, Any] | None = None, gpus_per_replica: int = 1
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "cloud": "aws",
        "region": "us-east-1",
        "gpuPool": {"instanceType": instance, "gpusPerNode": gpus},
        "triton": {"gpusPerReplica": gpus_per_replica},
    }
    if model is not None:
        config["model"] = model
    return config


def _problems(config: dict[str, Any]) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    return "\n".join(info.value.problems)


def test_default_model_fits_every_catalogue_machine() -> None:
    model = ModelSettings()
    for cloud, machines in GPU_MACHINES.items():
        assert {c.machine.name for c in machines_that_fit(cloud, model)} == set(machines), cloud


def test_a_model_too_big_names_its_figures_and_the_cheapest_machines_that_fit() -> None:
    message = _problems(_stack(model={**LLAMA_70B, "precision": "bf16", "backend": "tensorrt-llm"}))
    assert message.startswith("tritonform:gpuPool.instanceType: llama-70b (bf16, context 4096, 8 sequences)")
    assert "GiB per GPU (weights 131." in message and "of 22.8 usable on a 24 GiB GPU" in message
    assert "cheapest first: g6e.12xlarge (4 x L40S 48GB, $10.493/h, gpusPerReplica 4" in message


def test_kv_cache_that_overflows_says_to_lower_context_or_concurrency() -> None:
    message = _problems(_stack(model={**LLAMA_8B, "contextLength": 16384}))
    assert "lower model.contextLength or model.concurrency" in message
    assert "g6e.xlarge" in message  # one L40S holds it on the ONNX backend (one GPU per replica)


def test_tensor_parallel_fits_what_one_gpu_cannot() -> None:
    model = {**LLAMA_8B, "contextLength": 16384, "backend": "tensorrt-llm"}
    assert _problems(_stack("g5.12xlarge", 4, model, gpus_per_replica=1))
    settings = load_settings(_stack("g5.12xlarge", 4, model, gpus_per_replica=2))
    assert settings.triton.gpus_per_replica == 2


def test_gpus_per_replica_must_divide_the_node_and_is_one_on_onnx() -> None:
    message = _problems(_stack("g5.12xlarge", 4, {**LLAMA_8B, "backend": "tensorrt-llm"}, gpus_per_replica=3))
    assert "tritonform:triton.gpusPerReplica: 3 does not divide gpuPool.gpusPerNode (4)" in message
    assert "1, 2, 4" in message
    message = _problems(_stack("g5.12xlarge", 4, LLAMA_8B, gpus_per_replica=2))
    assert "the ONNX backend runs a replica on one GPU" in message and "tensorrt-llm" in message


def test_model_from_a_checkpoint_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "num_hidden_layers": 32,
                "hidden_size": 4096,
                "intermediate_size": 14336,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "vocab_size": 128256,
            }
        )
    )
    settings = load_settings(_stack("g6e.xlarge", model={"name": "ckpt", "configJson": str(config)}))
    assert settings.model.shape().parameter_count == pytest.approx(8.03e9, rel=0.01)
    message = _problems(_stack(model={"configJson": str(tmp_path / "missing.json")}))
    assert "model.configJson" in message and "does not exist" in message


def test_kv_heads_must_divide_query_heads() -> None:
    assert "kvHeads: 5 must divide attentionHeads (32)" in _problems(_stack(model={**LLAMA_8B, "kvHeads": 5}))


def test_onnx_int4_sizes_its_fp32_kv_cache_and_tensorrt_llm_int4_a_16_bit_one() -> None:
    """The ONNX backend's weight-only int4/int8 builds keep fp32 activations and KV cache (the build
    refuses --dtype with --quantize), so the fit counts 4 bytes a KV element there and 2 on TensorRT-LLM."""
    machine = GPU_MACHINES["aws"]["g6e.xlarge"]
    onnx = ModelSettings.model_validate({**LLAMA_8B, "precision": "int4", "backend": "onnx"})
    trtllm = ModelSettings.model_validate({**LLAMA_8B, "precision": "int4", "backend": "tensorrt-llm"})
    assert onnx.compute_precision() == "fp32" and trtllm.compute_precision() == "int4"
    onnx_fit, trtllm_fit = replica_estimate(onnx, machine, 1), replica_estimate(trtllm, machine, 1)
    assert onnx_fit.weights_gib == trtllm_fit.weights_gib
    assert onnx_fit.kv_cache_gib == pytest.approx(2 * trtllm_fit.kv_cache_gib)


def test_a_trtllm_node_disk_too_small_names_the_size_to_set() -> None:
    """The disk check's advice carries the number (it was once printed as a literal placeholder)."""
    with pytest.raises(ValueError, match=r"set diskSizeGb to at least \d+$"):
        check_disk("tensorrt-llm", 50, ModelSettings.model_validate({**LLAMA_8B, "precision": "bf16"}))
