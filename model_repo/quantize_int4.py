"""4-bit weights that keep each block's exact offset: MatMulNBits plus a per-block offset correction.

Why by hand: onnxruntime's 4-bit quantiser rounds each block's zero point to an integer, which shifts
every weight of a block by up to half a step. On checkpoints that were themselves 4-bit with a float
offset per block (SmolLM2-135M here comes from a Q4_1 GGUF: w = q*d + m) that shift is systematic and
next-token agreement falls to ~69%. MatMulNBits also accepts float zero points, but onnxruntime's CPU
kernel then takes a dequantising slow path (~7 tok/s instead of ~60 on SmolLM2).

So each block of `BLOCK` weights along K is stored as w = (q - 8) * scale + offset, with q in 0..15,
scale = (max - min) / 15 and offset = min + 8 * scale:
    A @ W = MatMulNBits(A, q, scale)            # the fast symmetric 4-bit kernel
          + (A @ E) @ offsets                   # E [K, K/BLOCK] sums A over each block
The correction costs two small fp32 MatMuls and an Add per projection. To keep that overhead low,
projections that read the same input (q/k/v, gate/up) are first merged into one MatMul and Split,
which also halves the number of 4-bit kernel calls. For weights already on a Q4_1 grid this
reproduces them exactly; for others it is min/max round-to-nearest with an unrounded offset.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

BLOCK = 32
BITS = 4


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


def split_blocks(packed: np.ndarray, scales: np.ndarray, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """The same 4-bit weights as `parts` kernel blocks per offset block: each block's bytes cut in
    `parts`, its scale repeated. The weights are unchanged (still exact on a Q4_1 grid); the kernel
    then quantises its int8 activations per BLOCK // parts values, which keeps outliers local."""
    n, blocks, half = packed.shape
    if half % parts:
        raise ValueError(f"a block of {BLOCK} does not split into {parts} kernel blocks")
    return (
        np.ascontiguousarray(packed.reshape(n, blocks * parts, half // parts)),
        np.repeat(scales.reshape(n, blocks), parts, axis=1).reshape(-1),
    )


def quantize_int4_with_offsets(
    model: Any, accuracy_level: int, kernel_blocks: Mapping[str, int] | None = None
) -> int:
    """Replace every MatMul with a constant 2-D fp32 weight by the 4-bit form above. Returns how many
    were replaced. Works in place on an `onnx.ModelProto`.

    `kernel_blocks` maps a MatMul's name to the MatMulNBits block size its weights run with (BLOCK
    by default; 16 splits each block in two, see `split_blocks`); offsets stay per BLOCK."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {node.output[0]: init for node, init in weight_matmuls(model)}
    block_sums: dict[str, str] = {}
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
        kernel_block = (kernel_blocks or {}).get(node.name, BLOCK)
        if kernel_block != BLOCK:
            packed, scales = split_blocks(packed, scales, BLOCK // kernel_block)
        base = node.name or node.output[0]
        source = node.input[0]
        if source not in block_sums:
            ones = np.zeros((k, offsets.shape[0]), dtype=np.float32)
            ones[np.arange(k), np.arange(k) // BLOCK] = 1.0
            graph.initializer.append(numpy_helper.from_array(ones, base + "_block_sum"))
            new_nodes.append(helper.make_node("MatMul", [source, base + "_block_sum"], [base + "_sums"]))
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
                block_size=kernel_block,
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


def _drop_unused_initializers(model: Any) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
