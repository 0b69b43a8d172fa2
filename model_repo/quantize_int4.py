"""4-bit weights that keep each block's exact offset: MatMulNBits plus a per-block offset correction.

Why by hand: onnxruntime's 4-bit quantiser rounds each block's zero point to an integer, which shifts
every weight of a block by up to half a step. On checkpoints that were themselves 4-bit with a float
offset per block (SmolLM2-135M here comes from a Q4_1 GGUF: w = q*d + m) that shift is systematic and
next-token agreement falls to ~69%. MatMulNBits also accepts float zero points, but onnxruntime's CPU
kernel then takes a dequantising slow path (~7 tok/s instead of ~60 on SmolLM2; onnxruntime 1.32, one
call of SmolLM2's shapes: 25-32x slower than the symmetric kernel plus the correction below).

So each block of `BLOCK` weights along K is stored as w = (q - 8) * scale + offset, with q in 0..15,
scale = (max - min) / 15 and offset = min + 8 * scale:
    A @ W = MatMulNBits(A, q, scale)            # the fast symmetric 4-bit kernel
          + (A @ E) @ offsets                   # A @ E: A's sum over each block
The correction costs a block sum (see `_block_sum_nodes`), a small fp32 MatMul and an Add per
projection, and its float32 scale and offset per block make 6 bits a weight (Q4_1: 5, with fp16
ones). To keep the overhead low, projections that read the same input (q/k/v, gate/up) are first
merged into one MatMul and Split, which also halves the number of 4-bit kernel calls. For weights
already on a Q4_1 grid this reproduces them exactly; for others it is min/max round-to-nearest with
an unrounded offset.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

BLOCK = 32
BITS = 4
# Block sums by a 0/1 matrix up to this size (SmolLM2's hidden 576: 41 KB, read in microseconds, one
# node), by Reshape + ReduceSum above it (its MLP width 1536: 295 KB per layer, 9 MB a token).
BLOCK_SUM_MATRIX_BYTES = 64 * 1024


def weight_matmuls(model: Any) -> list[tuple[Any, Any]]:
    """(node, weight initializer) for every MatMul whose second input is a constant 2-D tensor."""
    inits = {i.name: i for i in model.graph.initializer}
    return [
        (n, inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "MatMul"
        and len(n.input) == 2
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 2
    ]


def merge_sibling_matmuls(model: Any) -> int:
    """Merge MatMuls that share their input and have constant weights into one MatMul + Split.
    Returns the number of merged groups. Works in place on an `onnx.ModelProto`."""
    from onnx import helper, numpy_helper

    graph = model.graph
    groups: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
    for node, init in weight_matmuls(model):
        groups[node.input[0]].append((node, init))
    replace: dict[str, list[Any]] = {}  # by first output name: protobuf wrappers have no stable id()
    merged = 0
    for source, members in groups.items():
        if len(members) < 2:
            continue
        nodes = [node for node, _ in members]
        weights = [numpy_helper.to_array(init) for _, init in members]
        if len({w.shape[0] for w in weights}) != 1 or len({w.dtype for w in weights}) != 1:
            continue
        base = f"{nodes[0].name or nodes[0].output[0]}_merged"
        graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), base + "_weight"))
        sizes = np.asarray([w.shape[1] for w in weights], dtype=np.int64)
        graph.initializer.append(numpy_helper.from_array(sizes, base + "_sizes"))
        replace[nodes[0].output[0]] = [
            helper.make_node("MatMul", [source, base + "_weight"], [base + "_out"], name=base),
            helper.make_node(
                "Split",
                [base + "_out", base + "_sizes"],
                [n.output[0] for n in nodes],
                axis=-1,
                name=base + "_split",
            ),
        ]
        for n in nodes[1:]:
            replace[n.output[0]] = []
        merged += 1
    if merged:
        new_nodes = [m for n in graph.node for m in replace.get(n.output[0], [n])]
        del graph.node[:]
        graph.node.extend(new_nodes)
        _drop_unused_initializers(model)
    return merged


def quantize_blocks(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weight [K, N] -> (packed uint8 [N, blocks, BLOCK/2], scales [N*blocks], offsets [blocks, N]).

    Dequantised: w[k, n] = (q - 8) * scale[n, k // BLOCK] + offset[k // BLOCK, n].
    """
    k, n = weight.shape
    blocks = -(-k // BLOCK)
    wt = np.asarray(weight, dtype=np.float32).T  # [N, K]
    if k % BLOCK:  # pad with the last real value so padding does not widen the block's range
        wt = np.pad(wt, ((0, 0), (0, blocks * BLOCK - k)), mode="edge")
    grid = wt.reshape(n, blocks, BLOCK)
    low, high = grid.min(-1), grid.max(-1)
    scale = (high - low) / 15.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint((grid - low[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    offsets = (low + 8.0 * scale).T.astype(np.float32)
    return packed, scale.astype(np.float32).reshape(-1), np.ascontiguousarray(offsets)


def dequantize_blocks(packed: np.ndarray, scales: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """Inverse of `quantize_blocks` (tests, checks): the [K, N] float weight the graph computes with."""
    n, blocks, _ = packed.shape
    q = np.empty((n, blocks, BLOCK), dtype=np.float32)
    q[..., 0::2] = packed & 0x0F
    q[..., 1::2] = packed >> 4
    w = (q - 8.0) * scales.reshape(n, blocks, 1) + offsets.T[..., None]
    return w.reshape(n, blocks * BLOCK)[:, :k].T


def quantize_int4_with_offsets(model: Any, accuracy_level: int) -> int:
    """Replace every MatMul with a constant 2-D fp32 weight by the 4-bit form above. Returns how many
    were replaced. Works in place on an `onnx.ModelProto`."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {node.output[0]: init for node, init in weight_matmuls(model)}
    block_sums: dict[str, str] = {}
    # ReduceSum takes its axes as an input from opset 13 on; before, block sums go through a MatMul
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in (*graph.value_info, *graph.input, *graph.output)
        if v.type.tensor_type.HasField("shape") and opset >= 13
    }
    new_nodes: list[Any] = []
    count = 0
    for node in graph.node:
        init = weights.get(node.output[0])
        weight = None if init is None else numpy_helper.to_array(init)
        if weight is None or weight.dtype != np.float32:
            new_nodes.append(node)
            continue
        k, n = weight.shape
        packed, scales, offsets = quantize_blocks(weight)
        base = node.name or node.output[0]
        source = node.input[0]
        if source not in block_sums:
            new_nodes += _block_sum_nodes(graph, source, ranks.get(source), k, base)
            block_sums[source] = base + "_sums"
        graph.initializer.extend(
            [
                numpy_helper.from_array(packed, base + "_q4"),
                numpy_helper.from_array(scales, base + "_scales"),
                numpy_helper.from_array(offsets, base + "_offsets"),
            ]
        )
        new_nodes += [
            helper.make_node(
                "MatMulNBits",
                [source, base + "_q4", base + "_scales"],
                [base + "_main"],
                name=base + "_MatMulNBits",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=BITS,
                block_size=BLOCK,
                accuracy_level=accuracy_level,
            ),
            helper.make_node("MatMul", [block_sums[source], base + "_offsets"], [base + "_correction"]),
            helper.make_node(
                "Add", [base + "_main", base + "_correction"], list(node.output), name=base + "_add"
            ),
        ]
        count += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return count


def _block_sum_nodes(graph: Any, source: str, rank: int | None, k: int, base: str) -> list[Any]:
    """Nodes computing `source`'s sums over each block of BLOCK values along its last axis, as
    `base`_sums: a MatMul with a [K, blocks] 0/1 matrix (one node; it reads K * blocks floats every
    call), or, once that matrix passes BLOCK_SUM_MATRIX_BYTES and when the input's rank is known and
    K a whole number of blocks, Reshape + ReduceSum (two nodes, no weight read)."""
    from onnx import helper, numpy_helper

    blocks = -(-k // BLOCK)
    large = k * blocks * 4 > BLOCK_SUM_MATRIX_BYTES
    if large and rank is not None and rank >= 2 and k % BLOCK == 0:
        shape = np.asarray([0] * (rank - 1) + [blocks, BLOCK], dtype=np.int64)
        graph.initializer.extend(
            [
                numpy_helper.from_array(shape, base + "_block_shape"),
                numpy_helper.from_array(np.asarray([-1], dtype=np.int64), base + "_last_axis"),
            ]
        )
        return [
            helper.make_node("Reshape", [source, base + "_block_shape"], [base + "_blocks"]),
            helper.make_node(
                "ReduceSum", [base + "_blocks", base + "_last_axis"], [base + "_sums"], keepdims=0
            ),
        ]
    ones = np.zeros((k, blocks), dtype=np.float32)
    ones[np.arange(k), np.arange(k) // BLOCK] = 1.0
    graph.initializer.append(numpy_helper.from_array(ones, base + "_block_sum"))
    return [helper.make_node("MatMul", [source, base + "_block_sum"], [base + "_sums"])]


def _drop_unused_initializers(model: Any) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
