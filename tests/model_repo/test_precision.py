"""Half-precision builds: the checkpoint loaded in fp16 and exported as is (fp16 weights and KV cache, fp32
logits, no CPU-only casts baked in), weights beyond fp16's range refused, and the fp32 reference the fp16
gate uses computed module by module from the half model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model_repo.export import load_torch_model
from model_repo.gates import GateReference, TextEncoder, check_quality
from model_repo.precision import DTYPES, PRECISIONS, PrecisionError, float32_compute
from model_repo.runtime.contract import GenerationMetadata
from model_repo.runtime.engine import Engine


def test_the_build_offers_the_float_types_its_gates_can_run() -> None:
    assert DTYPES == ("float32", "float16")
    assert [PRECISIONS[name].float_type for name in ("fp32", "fp16", "bf16")] == [*DTYPES, "bfloat16"]


def test_fp16_export_is_half_with_fp32_logits(tiny_llama_fp16: Path) -> None:
    """Weights and KV cache in fp16, logits fp32, GroupQueryAttention applied, and none of the fp32
    islands onnxruntime's CPU provider inserts (it has no fp16 MatMul) saved into the graph GPUs run."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(tiny_llama_fp16 / "model.onnx"), load_external_data=False)
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert types["logits"] == TensorProto.FLOAT
    assert types["past_key_values.0.key"] == types["present.1.value"] == TensorProto.FLOAT16
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GroupQueryAttention") == 2 and ops.count("RotaryEmbedding") == 4
    assert not [n.name for n in model.graph.node if n.name.startswith("InsertedPrecisionFreeCast")]
    matmul_weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
    weights = [t for t in model.graph.initializer if t.name in matmul_weights]
    assert weights and {t.data_type for t in weights} == {TensorProto.FLOAT16}
    assert GenerationMetadata.load(tiny_llama_fp16).dtype == "float16"
    assert json.loads((tiny_llama_fp16 / "generation.json").read_text())["dtype"] == "float16"


def test_float32_compute_runs_a_half_model_in_fp32(tiny_llama_checkpoint: Path) -> None:
    """The reference equals an fp32 model holding the same (fp16-rounded) weights, not the fp16 forward;
    afterwards the model is half again, with no hooks left."""
    import torch

    half, _tok = load_torch_model(tiny_llama_checkpoint, "float16")
    full, _tok = load_torch_model(tiny_llama_checkpoint)
    with torch.no_grad():
        for p in full.parameters():
            p.copy_(p.half().float())
        ids = torch.tensor([list(range(3, 60))])
        expected = full(input_ids=ids).logits
        with float32_compute(half):
            got = half(input_ids=ids).logits
        plain = half(input_ids=ids).logits.float()
    assert got.dtype == torch.float32
    upcast_error = float((got - expected).abs().max())
    assert upcast_error < 1e-4 < float((plain - expected).abs().max())
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in half.modules())


def test_half_load_refuses_weights_beyond_fp16_range(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    checkpoint = tmp_path / "big"
    shutil.copytree(tiny_llama_checkpoint, checkpoint)
    weights = load_file(str(checkpoint / "model.safetensors"))
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] = 1e6
    save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PrecisionError, match=r"beyond float16's range .* build with --dtype float32"):
        load_torch_model(checkpoint, "float16")


def test_fp16_gate_passes_the_right_model_and_stops_another(
    tiny_llama_fp16: Path, tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """The torch reference measures the fp16 export within fp16's bounds, and a model of other weights
    fails it: the gate compares against the checkpoint, not against itself."""
    from model_repo.checkpoint import make_tiny_checkpoint
    from model_repo.export import generation_metadata

    engine = Engine.load(tiny_llama_fp16, num_threads=1)

    def reference(checkpoint: Path) -> GateReference:
        model, tok = load_torch_model(checkpoint, "float16")
        encoder = TextEncoder(generation_metadata(model, tok), tok.backend_tokenizer)
        assert encoder.encode("hello world") == engine.encode("hello world")
        with float32_compute(model):
            return GateReference.from_torch(model, encoder)

    own = check_quality(engine, reference(tiny_llama_checkpoint), min_agreement=0.99, max_ppl_increase=0.01)
    assert own.passed and own.decode_tokens == 512
    other = reference(make_tiny_checkpoint(tmp_path / "other", "llama", seed=3))
    result = check_quality(engine, other, raise_on_fail=False)
    assert not result.passed and result.agreement < 0.5


def test_torch_and_engine_references_agree_for_fp32(tiny_engine: Engine, tiny_llama_checkpoint: Path) -> None:
    """The same gate record from PyTorch and from the fp32 export (the two references a build uses)."""
    from model_repo.export import generation_metadata

    model, tok = load_torch_model(tiny_llama_checkpoint)
    from_torch = GateReference.from_torch(
        model, TextEncoder(generation_metadata(model, tok), tok.backend_tokenizer)
    )
    from_engine = GateReference.from_engine(tiny_engine)
    assert from_torch.windows == from_engine.windows and from_torch.prompts == from_engine.prompts
    assert from_torch.answers == from_engine.answers
    same = np.mean(np.concatenate(from_torch.argmax) == np.concatenate(from_engine.argmax))
    assert same == 1.0
    np.testing.assert_allclose(np.concatenate(from_torch.nll), np.concatenate(from_engine.nll), atol=1e-3)
