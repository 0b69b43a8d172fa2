"""The architectures the catalogue claims, built for real: tiny random-weight Qwen2 (q/k/v biases), Mistral
(untied output projection) and Llama 3 (llama3 rope scaling, theta 500000) go through `build` like the
default model and pass its gates. The Llama 3 build is fp16: loaded and exported in fp16, gated against
PyTorch computing in fp32 (no exact parity there: fp16 rounds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repo.build import BuildOptions, build
from model_repo.checkpoint import make_tiny_checkpoint
from model_repo.manifest import MANIFEST_FILE
from model_repo.precision import FP16_MAX_PPL_INCREASE, FP16_MIN_AGREEMENT, REFERENCE
from model_repo.runtime.contract import KV_LAYOUT_RIGHT
from model_repo.runtime.engine import Engine


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "dtype"), [("qwen2", "float32"), ("mistral", "float32"), ("llama3", "float16")]
)
def test_each_architecture_builds_and_passes_its_gates(family: str, dtype: str, tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "checkpoint", family)
    out = tmp_path / "repo"
    report = build(BuildOptions(model=str(checkpoint), out=out, dtype=dtype, parity_tokens=32))

    assert report["checkpoint"]["model_type"] == ("llama" if family == "llama3" else family)
    if dtype == "float32":
        assert report["parity"]["passed"] and report["parity"]["n_tokens"] == 32  # ONNX == PyTorch, greedy
    assert report["export"]["dtype"] == dtype
    assert report["export"]["fusions"]["group_query_attention"] == 2  # the fast attention path applies
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["dtype"] == dtype and manifest["quantization"] == "none"
    engine = Engine.load(out / "llm" / "1" / "engine", num_threads=1)
    assert engine.metadata.kv_layout == KV_LAYOUT_RIGHT and engine.metadata.dtype == dtype
    assert len(engine.greedy_ids(engine.encode("hello"), 8)) == 8
    if dtype == "float16":
        quality = report["quality"]
        assert quality["passed"] and quality["agreement"] >= FP16_MIN_AGREEMENT
        assert quality["perplexity_increase"] <= FP16_MAX_PPL_INCREASE
        assert report["precision"]["dtype"] == "float16" and "parity" not in report
        assert report["precision"]["reference"] == REFERENCE
        assert engine._float.__name__ == "float16"  # the KV cache the session takes
