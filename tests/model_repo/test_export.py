"""ONNX export with KV cache: interface, fp32 greedy parity with PyTorch, both families."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_repo.checkpoint import CheckpointError
from model_repo.export import export_onnx, load_torch_model
from model_repo.gates import check_parity
from model_repo.runtime.contract import KV_LAYOUT_LEFT, KV_LAYOUT_RIGHT, GenerationMetadata
from model_repo.runtime.engine import Engine


def test_export_writes_the_engine_model_directory(tiny_llama_export: Path) -> None:
    names = {p.name for p in tiny_llama_export.iterdir()}
    assert {"model.onnx", "model.onnx.data", "tokenizer.json", "generation.json"} <= names
    assert not (tiny_llama_export / "raw").exists()
    meta = GenerationMetadata.load(tiny_llama_export)
    assert (meta.architecture, meta.num_layers, meta.num_kv_heads, meta.head_dim) == ("llama", 2, 2, 16)
    assert meta.eos_token_ids and meta.chat_template and meta.quantization == "none"


def test_export_graph_has_kv_cache_inputs_and_outputs(tiny_engine: Engine) -> None:
    inputs = {i.name for i in tiny_engine.session.get_inputs()}
    outputs = {o.name for o in tiny_engine.session.get_outputs()}
    assert {
        "input_ids",
        "attention_mask",
        "position_ids",
        "logits_to_keep",
        "past_key_values.1.value",
    } <= inputs
    assert {"logits", "present.0.key", "present.1.value"} <= outputs


def test_fp32_llama_export_matches_pytorch_greedy_for_64_tokens(
    tiny_engine: Engine, tiny_llama_checkpoint: Path
) -> None:
    model, _tokenizer = load_torch_model(tiny_llama_checkpoint)
    result = check_parity(tiny_engine, model, n_tokens=64)
    assert result.passed and result.matched_tokens == [64, 64, 64]


def test_fp32_gpt2_export_matches_pytorch_greedy(tiny_gpt2_checkpoint: Path, tiny_gpt2_export: Path) -> None:
    model, _tokenizer = load_torch_model(tiny_gpt2_checkpoint)
    result = check_parity(Engine.load(tiny_gpt2_export, num_threads=1), model, n_tokens=64)
    assert result.passed


def test_llama_attention_becomes_group_query_attention_over_a_right_padded_cache(
    tiny_llama_export: Path, tiny_gpt2_export: Path
) -> None:
    import onnx

    graph = onnx.load(str(tiny_llama_export / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    # one GroupQueryAttention per layer; no MultiHeadAttention and no per-step KV copy (Concat/Expand)
    assert ops.count("GroupQueryAttention") == 2 and "MultiHeadAttention" not in ops
    assert "Expand" not in ops
    # besides attention, only Shape (the batch size) reads the past: no Concat copies it
    readers = {n.op_type for n in graph.node if any(i.startswith("past_key_values") for i in n.input)}
    assert readers == {"GroupQueryAttention", "Shape"}
    assert GenerationMetadata.load(tiny_llama_export).kv_layout == KV_LAYOUT_RIGHT
    # GPT-2's attention is not fused: its plain graph keeps the left-padded layout
    assert GenerationMetadata.load(tiny_gpt2_export).kv_layout == KV_LAYOUT_LEFT


def test_export_of_an_unsupported_architecture_fails_before_loading(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="unsupported architecture 'bert'"):
        export_onnx(tmp_path, tmp_path / "out")


def test_group_query_attention_pass_leaves_graphs_it_does_not_recognise(
    tiny_gpt2_export: Path, tmp_path: Path
) -> None:
    from model_repo.gqa import use_group_query_attention

    target = tmp_path / "gqa.onnx"
    assert use_group_query_attention(tiny_gpt2_export / "model.onnx", target, 2) == 0
    assert not target.exists()
