"""Packed q/k/v with the rotary embedding inside GroupQueryAttention (`pack_qkv_with_rotary`): the
graph loses the per-layer Split/Reshape/Transpose/RotaryEmbedding nodes and computes the same thing,
for a prefill, a prefill over a cached prefix and a padded batch of decode steps."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from model_repo.export import save_onnx
from model_repo.gqa import pack_qkv_with_rotary
from model_repo.quantize_int4 import merge_sibling_matmuls
from model_repo.runtime.engine import Engine
from model_repo.runtime.sampling import SamplingParams


def _variant(src: Path, dst: Path, pack: bool) -> tuple[Path, int]:
    model = onnx.load(str(src / "model.onnx"))
    merge_sibling_matmuls(model)
    packed = pack_qkv_with_rotary(model) if pack else 0
    dst.mkdir()
    save_onnx(model, dst / "model.onnx")
    for name in ("tokenizer.json", "generation.json"):
        shutil.copy2(src / name, dst / name)
    return dst, packed


def _batch_tokens(engine: Engine, prompts: list[list[int]], steps: int) -> dict[str, list[int]]:
    batch = engine.new_batch()
    params = SamplingParams(max_tokens=steps, ignore_eos=True)
    tokens = {str(i): [batch.add(str(i), ids, params).token_id] for i, ids in enumerate(prompts)}
    while len(batch):
        for out in batch.step():
            tokens[out.request_id].append(out.token_id)
    return tokens


def test_packed_attention_drops_the_rotary_nodes_and_computes_the_same(
    tiny_llama_export: Path, tmp_path: Path
) -> None:
    """Two layers rewritten, 7 nodes fewer in each (no RotaryEmbedding, q/k/v Split or key
    Reshape/Transpose left); logits of a
    prefill equal to 1e-4, and greedy tokens equal in one padded batch of prompts of different
    lengths and after a prefill that reuses a cached prefix."""
    plain_dir, _ = _variant(tiny_llama_export, tmp_path / "plain", pack=False)
    packed_dir, count = _variant(tiny_llama_export, tmp_path / "packed", pack=True)
    assert count == 2
    graph = onnx.load(str(packed_dir / "model.onnx"), load_external_data=False).graph
    before = [
        n.op_type for n in onnx.load(str(plain_dir / "model.onnx"), load_external_data=False).graph.node
    ]
    ops = [n.op_type for n in graph.node]
    gone = Counter(before) - Counter(ops)
    assert "RotaryEmbedding" not in ops and not Counter(ops) - Counter(before)
    # per layer: the q/k/v Split, the key's Reshape/Transpose/RotaryEmbedding/Transpose/Reshape and the
    # query's RotaryEmbedding (plus the key's shape arithmetic, computed once per graph)
    assert {op: gone[op] for op in ("Split", "Reshape", "Transpose", "RotaryEmbedding")} == {
        "Split": 2,
        "Reshape": 4,
        "Transpose": 4,
        "RotaryEmbedding": 4,
    }
    for gqa in (n for n in graph.node if n.op_type == "GroupQueryAttention"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gqa.attribute}
        assert attrs["do_rotary"] == 1 and list(gqa.input[1:3]) == ["", ""]

    plain, packed = Engine.load(plain_dir, num_threads=1), Engine.load(packed_dir, num_threads=1)
    ids = plain.encode("hello world, the quick brown fox jumps over the lazy dog")
    np.testing.assert_allclose(packed.prompt_logits(ids), plain.prompt_logits(ids), atol=1e-4)
    prompts = [ids, ids[:5], plain.encode("a different prompt")]
    assert _batch_tokens(packed, prompts, 12) == _batch_tokens(plain, prompts, 12)
    # the same prompt again: the engines prefill only the tail after their cached prefix
    again = SamplingParams(max_tokens=12, ignore_eos=True)
    for engine in (plain, packed):
        engine.generate_text(ids + plain.encode(" once"), again)
    tail = ids + plain.encode(" twice more")
    assert [t.token_id for t in packed.generate(tail, again)] == [
        t.token_id for t in plain.generate(tail, again)
    ]


def test_a_graph_already_packed_is_left_alone(tiny_llama_export: Path) -> None:
    """A second pass finds no unpacked attention and changes nothing."""
    model = onnx.load(str(tiny_llama_export / "model.onnx"))
    merge_sibling_matmuls(model)
    assert pack_qkv_with_rotary(model) == 2
    before = model.SerializeToString()
    assert pack_qkv_with_rotary(model) == 0
    assert model.SerializeToString() == before
