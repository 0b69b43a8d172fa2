"""Weight-only quantisation: MatMulNBits at the chosen bits, lm_head included, metadata updated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from model_repo.quantize import QuantizeError, quantize_model
from model_repo.runtime.contract import GenerationMetadata
from model_repo.runtime.engine import Engine


def _nbits(model_dir: Path) -> list[int]:
    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    return [
        next(a.i for a in n.attribute if a.name == "bits")
        for n in model.graph.node
        if n.op_type == "MatMulNBits"
    ]


def test_int8_turns_every_weight_matmul_into_8bit_matmulnbits(tiny_llama_int8: Path) -> None:
    bits = _nbits(tiny_llama_int8)
    # 2 layers x 7 projections + the output projection (untied at export so it is quantised too).
    assert bits == [8] * 15
    assert GenerationMetadata.load(tiny_llama_int8).quantization == "int8"


def test_int4_merges_shared_input_projections_and_rescores_the_tied_output_projection(
    tiny_llama_export: Path, tmp_path: Path
) -> None:
    """int4: every projection at 4 bits (q/k/v and gate/up merged); the output projection, tied to the
    embedding in the tiny Llama, at 4 bits too, its best scores rescored from the fp32 embedding."""
    result = quantize_model(tiny_llama_export, tmp_path / "int4", "int4")
    bits = sorted(_nbits(result.model_dir))
    # 2 layers x (q/k/v merged, o, gate/up merged, down) + the output projection, all at 4 bits.
    assert bits == [4] * 9 and result.quantized_matmuls == 9
    assert result.head == "4-bit, top 64 rescored in fp32"
    graph = onnx.load(str(result.model_dir / "model.onnx")).graph
    producer = next(n for n in graph.node if "logits" in n.output)
    assert producer.op_type == "ScatterElements"
    assert [n.op_type for n in graph.node].count("TopK") == 1


def test_int4_model_follows_the_fp32_model(tiny_llama_export: Path, tmp_path: Path) -> None:
    out = quantize_model(tiny_llama_export, tmp_path / "int4", "int4").model_dir
    fp32 = Engine.load(tiny_llama_export, num_threads=1)
    int4 = Engine.load(out, num_threads=1)
    ids = fp32.encode("hello world, the quick brown fox")
    a, b = fp32.prompt_logits(ids), int4.prompt_logits(ids)
    # 4-bit weights of a random Gaussian model move logits somewhat (measured r ~0.96), never wildly
    # (a wrong offset sign or block layout would make them unrelated).
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_quantised_model_still_generates(tiny_llama_int8: Path) -> None:
    engine = Engine.load(tiny_llama_int8, num_threads=1)
    assert len(engine.greedy_ids(engine.encode("hello world"), 8)) == 8


def test_none_copies_the_fp32_model(tiny_llama_export: Path, tmp_path: Path) -> None:
    out = quantize_model(tiny_llama_export, tmp_path / "none", "none").model_dir
    assert (out / "model.onnx").read_bytes() == (tiny_llama_export / "model.onnx").read_bytes()


def test_unknown_method_is_rejected(tiny_llama_export: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="choose one of none, int8, int4"):
        quantize_model(tiny_llama_export, tmp_path / "x", "qint8-dynamic")
