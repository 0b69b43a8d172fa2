"""Attention with a key/value cache the engine can update in place: onnxruntime's GroupQueryAttention.

After onnxscript's fusions, each layer of a Llama-family graph computes attention as
    present_k = Concat(past_k, k_new)   -> Unsqueeze -> Expand (kv heads to query heads) -> Reshape
    present_v = Concat(past_v, v_new)   -> (same)
    out = MultiHeadAttention(q, expanded k, expanded v, mask)
so every decode step copies the whole cache once (Concat) and writes it again three times bigger
(Expand, for SmolLM2's 9 query heads over 3 kv heads). That cost grows with batch x context and was a
third of a batch-8 decode step. This pass replaces the group with one GroupQueryAttention node:
    out, present_k, present_v = GroupQueryAttention(q, k_new, v_new, past_k, past_v, seqlens_k, total)
which attends over the kv heads directly and, when the caller passes the same buffer as past and
present (the engine's IO binding), writes the new token's key/value in place: no per-step copy at all.

GroupQueryAttention wants each sequence's cache right-padded (its tokens in columns 0..len-1) and takes
lengths instead of a mask: seqlens_k = (ones in attention_mask) - 1 per row, total = the mask's width.
So the graph keeps the `attention_mask` input, and the engine must lay out its batch accordingly
(`GenerationMetadata.kv_layout = "right"`). Rotary embedding stays where the exporter put it (before).

Why by hand: onnxscript's own GQA fusion matches only a purely causal mask (batch-1 graphs without a
padding mask), not the padded-batch graph the engine needs; no other maintained tool rewrites it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class _NoMatch(Exception):
    pass


def _producer(nodes: dict[str, Any], name: str, op_type: str) -> Any:
    node = nodes.get(name)
    if node is None or node.op_type != op_type:
        raise _NoMatch(f"{name} is not made by {op_type}")
    return node


def _kv_concat(nodes: dict[str, Any], expanded: str, outputs: set[str]) -> Any:
    """The Concat(past, new) that a MultiHeadAttention key/value input was expanded from."""
    reshape = _producer(nodes, expanded, "Reshape")
    expand = _producer(nodes, reshape.input[0], "Expand")
    unsqueeze = _producer(nodes, expand.input[0], "Unsqueeze")
    concat = _producer(nodes, unsqueeze.input[0], "Concat")
    if len(concat.input) != 2 or concat.output[0] not in outputs:
        raise _NoMatch(f"{concat.name} does not make a present key/value output")
    return concat


def use_group_query_attention(src: Path, dst: Path, num_kv_heads: int) -> int:
    """Rewrite the MultiHeadAttention layers of `src` (an onnxscript-fused export) as GroupQueryAttention
    and save to `dst` (same folder: the external data file is shared). Returns how many layers were
    rewritten; 0 (and nothing written) when the graph does not have the expected shape, in which case
    the caller keeps `src` and the left-padded layout."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    nodes = {out: n for n in graph.node for out in n.output}
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    attention = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    if not attention or "attention_mask" not in inputs:
        return 0
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return 0  # control flow: outer-scope uses would defeat the dead-node pass below
    prefix = "gqa_"
    lengths = [
        helper.make_node("ReduceSum", ["attention_mask", f"{prefix}axis1"], [f"{prefix}lengths"], keepdims=0),
        helper.make_node("Sub", [f"{prefix}lengths", f"{prefix}one"], [f"{prefix}seqlens64"]),
        helper.make_node("Cast", [f"{prefix}seqlens64"], [f"{prefix}seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], [f"{prefix}total64"], start=1, end=2),
        helper.make_node("Cast", [f"{prefix}total64"], [f"{prefix}total"], to=TensorProto.INT32),
    ]
    constants = [
        numpy_helper.from_array(np.array([1], np.int64), f"{prefix}axis1"),
        numpy_helper.from_array(np.array(1, np.int64), f"{prefix}one"),
        numpy_helper.from_array(np.array([0, 0, -1], np.int64), f"{prefix}bsd"),
    ]
    # Nodes are keyed by their first output's name (unique in the graph): protobuf hands out new wrapper
    # objects for the same node, so id() is not a stable key.
    instead: dict[str, list[Any]] = {}  # MultiHeadAttention -> its replacement
    dropped: set[str] = set()  # the present Concats, now made by GroupQueryAttention
    try:
        for i, mha in enumerate(attention):
            attrs = {a.name: helper.get_attribute_value(a) for a in mha.attribute}
            if attrs.get("unidirectional", 0) or len(mha.input) < 3 or (len(mha.input) > 3 and mha.input[3]):
                raise _NoMatch(f"{mha.name}: unidirectional, packed or biased attention")
            concat_k = _kv_concat(nodes, mha.input[1], outputs)
            concat_v = _kv_concat(nodes, mha.input[2], outputs)
            past_k, k_new = concat_k.input  # k_new: [B, kv_heads, S, head_dim], rotary applied
            past_v, v_new = concat_v.input
            # v_new = Transpose(Reshape(v_proj [B, S, kv_heads*head_dim])): GQA takes v_proj itself
            v_proj = _producer(nodes, _producer(nodes, v_new, "Transpose").input[0], "Reshape").input[0]
            k_t, k_3d = f"{prefix}{i}_k_t", f"{prefix}{i}_k"
            heads: dict[str, Any] = {"num_heads": int(attrs["num_heads"]), "kv_num_heads": num_kv_heads}
            if "scale" in attrs:
                heads["scale"] = float(attrs["scale"])
            instead[mha.output[0]] = [
                helper.make_node("Transpose", [k_new], [k_t], perm=[0, 2, 1, 3]),
                helper.make_node("Reshape", [k_t, f"{prefix}bsd"], [k_3d]),
                helper.make_node(
                    "GroupQueryAttention",
                    [mha.input[0], k_3d, v_proj, past_k, past_v, f"{prefix}seqlens_k", f"{prefix}total"],
                    [mha.output[0], concat_k.output[0], concat_v.output[0]],
                    name=f"{prefix}{i}",
                    domain="com.microsoft",
                    **heads,
                ),
            ]
            dropped |= {concat_k.output[0], concat_v.output[0]}
    except _NoMatch:
        return 0
    # Each replacement sits where its MultiHeadAttention was (all its inputs exist by then).
    rewritten = list(lengths)
    for node in graph.node:
        if node.output[0] not in dropped:
            rewritten.extend(instead.get(node.output[0], [node]))
    live = _live(rewritten, outputs)
    del graph.node[:]
    graph.node.extend(live)
    used = {x for n in live for x in n.input}
    initializers = [t for t in [*graph.initializer, *constants] if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save_model(model, str(dst))
    return len(attention)


def _live(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """The nodes (in their order) that contribute to a graph output: the expanded-KV chains and the
    padding-mask arithmetic that MultiHeadAttention used are gone once nothing reads them."""
    needed, live = set(outputs), []
    for node in reversed(nodes):
        if set(node.output) & needed:
            live.append(node)
            needed |= set(node.input)
    return live[::-1]


def pack_qkv_with_rotary(model: Any) -> int:
    """Hand GroupQueryAttention the merged q/k/v projection's output as one packed input and let it
    apply the rotary embedding itself (`do_rotary`), on an `onnx.ModelProto` in place, after
    `quantize_int4.merge_sibling_matmuls` (before the weights are quantised). Returns how many layers
    were rewritten (0: the graph has another shape; nothing changed then).

    Per layer this drops the Split of the merged output, the key's Reshape/Transpose/RotaryEmbedding/
    Transpose/Reshape and the query's RotaryEmbedding: 7 of the ~26 nodes a decode step runs per
    layer, whose cost on a small model is mostly the per-node overhead. GroupQueryAttention derives
    each row's positions from seqlens_k (past length + i), the same positions the engine passes as
    `position_ids` for its right-padded cache and its batch-1 prefills. The merged weight's columns
    are reordered to q, k, v, the packed layout GroupQueryAttention reads.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes = {out: n for n in graph.node for out in n.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    inits = {i.name: i for i in graph.initializer}
    plans = []
    try:
        for gqa in [n for n in graph.node if n.op_type == "GroupQueryAttention"]:
            attrs = {a.name: helper.get_attribute_value(a) for a in gqa.attribute}
            if attrs.get("do_rotary", 0) or len(gqa.input) > 7 or not gqa.input[1] or not gqa.input[2]:
                raise _NoMatch(f"{gqa.name}: rotary inside or packed already")
            rotary_q = _producer(nodes, gqa.input[0], "RotaryEmbedding")
            reshape_k = _producer(nodes, gqa.input[1], "Reshape")
            rotary_k = _producer(
                nodes, _producer(nodes, reshape_k.input[0], "Transpose").input[0], "RotaryEmbedding"
            )
            view_k = _producer(nodes, _producer(nodes, rotary_k.input[0], "Transpose").input[0], "Reshape")
            q, k, v = rotary_q.input[0], view_k.input[0], gqa.input[2]
            split = _producer(nodes, q, "Split")
            if list(rotary_q.input[1:4]) != list(rotary_k.input[1:4]) or sorted(split.output) != sorted(
                [q, k, v]
            ):
                raise _NoMatch(f"{gqa.name}: q, k, v are not one Split's outputs with one rotary cache")
            if any(readers.get(x, 0) != 1 for x in (q, k, v)):
                raise _NoMatch(f"{gqa.name}: the projections are read elsewhere too")
            rq = {a.name: helper.get_attribute_value(a) for a in rotary_q.attribute}
            rk = {a.name: helper.get_attribute_value(a) for a in rotary_k.attribute}
            if rq.get("interleaved", 0) != rk.get("interleaved", 0) or {"rotary_embedding_dim", "scale"} & {
                *rq,
                *rk,
            }:
                raise _NoMatch(f"{gqa.name}: a partial or scaled rotary embedding")
            matmul = _producer(nodes, split.input[0], "MatMul")
            if matmul.input[1] not in inits or len(split.input) < 2 or split.input[1] not in inits:
                raise _NoMatch(f"{gqa.name}: the merged projection has no constant weight")
            plans.append((gqa, matmul, split, (q, k, v), rq.get("interleaved", 0), rotary_q.input[2:4]))
    except _NoMatch:
        return 0
    for gqa, matmul, split, qkv, interleaved, cos_sin in plans:
        weight = numpy_helper.to_array(inits[matmul.input[1]])
        sizes = numpy_helper.to_array(inits[split.input[1]]).tolist()
        starts = np.cumsum([0, *sizes])
        column = {name: slice(starts[i], starts[i + 1]) for i, name in enumerate(split.output)}
        packed = np.concatenate([weight[:, column[name]] for name in qkv], axis=1)
        inits[matmul.input[1]].CopyFrom(numpy_helper.from_array(packed, matmul.input[1]))
        past_and_lengths = list(gqa.input[3:7])  # past key, past value, seqlens_k, total length
        del gqa.input[:]
        gqa.input.extend([matmul.output[0], "", "", *past_and_lengths, *cos_sin])
        gqa.attribute.extend([helper.make_attribute("do_rotary", 1)])
        gqa.attribute.extend([helper.make_attribute("rotary_interleaved", int(interleaved))])
    outputs = {o.name for o in graph.output}
    live = _live(list(graph.node), outputs)
    del graph.node[:]
    graph.node.extend(live)
    used = {x for n in live for x in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return len(plans)
