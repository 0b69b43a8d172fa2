"""The fit and throughput arithmetic (infra/sizing.py): parameter counts match the published sizes of real
models, each memory part follows its formula, tensor parallelism splits what it should, and the decode
estimate is bandwidth over bytes read per step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.sizing import (
    GIB,
    ModelShape,
    ModelShapeError,
    estimate_memory,
    estimate_throughput,
    kv_bytes_per_token,
    shape_from_config,
    shape_from_config_file,
    weight_bytes,
)

# Published config.json numbers (Hugging Face model cards) and the sizes their cards state.
LLAMA_31_8B = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}
QWEN25_7B = {
    "model_type": "qwen2",
    "num_hidden_layers": 28,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}
SMOLLM2_135M = {
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


@pytest.mark.parametrize(
    ("config", "published_b"), [(LLAMA_31_8B, 8.03), (QWEN25_7B, 7.62), (SMOLLM2_135M, 0.135)]
)
def test_parameter_count_from_config_matches_the_published_size(config: dict, published_b: float) -> None:
    counted = shape_from_config(config).parameter_count / 1e9
    assert counted == pytest.approx(published_b, rel=0.01)


def test_kv_cache_of_llama_8b_is_128_kib_per_token_and_splits_over_tensor_parallel() -> None:
    shape = shape_from_config(LLAMA_31_8B)
    assert kv_bytes_per_token(shape, "fp16") == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert kv_bytes_per_token(shape, "fp16", tensor_parallel=2) == 64 * 1024
    # More GPUs than KV heads: each GPU keeps a whole head (replicated), never a fraction.
    assert kv_bytes_per_token(shape, "fp16", tensor_parallel=16) == kv_bytes_per_token(shape, "fp16", 8)
    assert kv_bytes_per_token(shape, "fp32") == 2 * kv_bytes_per_token(shape, "fp16")


def test_memory_parts_follow_their_formulas() -> None:
    shape = shape_from_config(LLAMA_31_8B)
    one = estimate_memory(shape, "bf16", context_length=4096, concurrency=8, gpu_memory_gib=24)
    assert one.weights_gib == pytest.approx(shape.parameter_count * 2 / GIB)
    assert one.kv_cache_gib == pytest.approx(4.0)  # 128 KiB x 4096 tokens x 8 sequences
    assert one.total_gib == pytest.approx(
        one.weights_gib + one.kv_cache_gib + one.activations_gib + one.runtime_gib
    )
    two = estimate_memory(
        shape, "bf16", context_length=4096, concurrency=8, gpu_memory_gib=24, tensor_parallel=2
    )
    assert two.weights_gib == pytest.approx(one.weights_gib / 2)
    assert two.kv_cache_gib == pytest.approx(one.kv_cache_gib / 2)
    assert two.total_gib < one.total_gib


def test_quantised_weights_keep_embeddings_at_16_bits() -> None:
    shape = shape_from_config(LLAMA_31_8B)
    embeddings = shape.embedding_parameters
    assert weight_bytes(shape, "int4") == pytest.approx(
        embeddings * 2 + (shape.parameter_count - embeddings) * (0.5 + 2 / 128)
    )
    assert weight_bytes(shape, "int4") < weight_bytes(shape, "int8") < weight_bytes(shape, "fp16")


def test_fits_means_within_the_usable_share_of_the_gpu() -> None:
    shape = shape_from_config(LLAMA_31_8B)
    assert estimate_memory(shape, "fp16", 4096, 8, gpu_memory_gib=24).fits
    assert not estimate_memory(shape, "fp16", 8192, 8, gpu_memory_gib=24).fits
    assert not estimate_memory(shape, "fp32", 1024, 1, gpu_memory_gib=24).fits  # 32 GB of weights


def test_decode_throughput_is_bandwidth_over_bytes_read_per_step() -> None:
    shape = ModelShape(
        "m",
        layers=2,
        hidden_size=64,
        intermediate_size=128,
        attention_heads=4,
        kv_heads=2,
        vocab_size=100,
        parameters=1e9,
    )
    t = estimate_throughput(
        shape, "fp16", context_length=1000, concurrency=4, bandwidth_gb_s=1000, efficiency=0.5
    )
    read = 2e9 + kv_bytes_per_token(shape, "fp16") * 500 * 4
    assert t.tokens_per_second == pytest.approx(4 / (read / 0.5e12))
    doubled = estimate_throughput(shape, "fp16", 1000, 4, bandwidth_gb_s=2000, efficiency=0.5)
    assert doubled.tokens_per_second == pytest.approx(2 * t.tokens_per_second)


def test_config_without_the_needed_numbers_names_them(tmp_path: Path) -> None:
    with pytest.raises(ModelShapeError, match="num_hidden_layers"):
        shape_from_config({"hidden_size": 4})
    with pytest.raises(ModelShapeError, match="does not exist"):
        shape_from_config_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("not json")
    with pytest.raises(ModelShapeError, match="not a readable JSON"):
        shape_from_config_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_31_8B))
    assert shape_from_config_file(tmp_path / "config.json").layers == 32


def test_sizing_reads_the_builds_precision_table_and_needs_only_the_standard_library() -> None:
    """One table of bytes per precision (model_repo/precision.py) for the plan and the build, and
    importing the sizing model loads nothing outside the standard library (scripts/gpu-check runs it on
    a GPU machine that has only PyTorch)."""
    import subprocess
    import sys

    from infra.sizing import BYTES_PER_PARAMETER, PRECISIONS
    from model_repo.precision import PRECISIONS as TABLE

    assert tuple(TABLE) == PRECISIONS and {n: p.weight_bytes for n, p in TABLE.items()} == BYTES_PER_PARAMETER
    code = (
        "import sys; import infra.sizing; "
        "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'__main__'}))"
    )
    # -S: no site-packages at all, so a third-party import would fail outright
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "['infra', 'model_repo']"
