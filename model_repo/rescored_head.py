"""The int4 build's output projection: 4-bit scores for the whole vocabulary, the best of them rescored
exactly against the fp32 token embedding it is tied to.

Why: the output projection (hidden -> vocabulary) is the largest matrix of a small model and decides the
next token directly. At 4 bits alone it fails the quality gate (SmolLM2-135M: 82.0% / 85.9% next-token
agreement, perplexity +5.1%), so the int4 build kept it at 8 bits, a quarter of each decode step's
kernel time (onnxruntime's 8-bit kernel costs ~1.6x its 4-bit one on this shape and batches worse).
Where the projection shares its matrix with the token embedding (tied, as SmolLM2's is), the session
already holds that matrix in fp32 for the embedding's Gather, so the tokens that can win need not be
scored at 4 bits at all:

    approx = MatMulNBits(h, W4)                   # 4 bits, integer zero points: every token
    top = TopK(approx, TOP_K)                     # the candidates
    exact = Gather(E, top) @ h                    # fp32 rows of the embedding: TOP_K x hidden
    logits = ScatterElements(approx, top, exact)  # exact where it matters, approximate elsewhere

Greedy and sampled tokens come from the exact scores whenever the winner is among the 4-bit top
TOP_K (the gate measures it: on SmolLM2 agreement rises over the 8-bit head's); the tail keeps 4-bit
scores, which moves the perplexity a little (+1.9% against +0.3%, gate 5%). A decode step reads
4-bit weights (0.64 bytes a weight with scales and zero points, against 1.125) plus TOP_K rows.
An untied projection keeps the 8-bit head: rescoring would need an extra fp32 copy of it in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Candidates rescored per position. 64 fp32 rows of SmolLM2's 576 = 147 KB read per token (the 4-bit
# matrix with its scales and zero points: ~18 MB). Prefills ask for the last position's logits only; a
# full-sequence logits call (the gates' teacher forcing) gathers TOP_K rows per position.
TOP_K = 64


def tied_table(model: Any, head: str) -> str | None:
    """Name of the fp32 Gather table [V, D] that equals the weight [D, V] of the MatMul `head`
    (a tied embedding the export gave the head its own copy of), or None."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    node = next((n for n in model.graph.node if n.name == head), None)
    if node is None or node.op_type != "MatMul" or node.input[1] not in inits:
        return None
    weight = inits[node.input[1]]
    if len(weight.dims) != 2:
        return None
    shape = tuple(reversed(weight.dims))
    tables = {
        n.input[0]
        for n in model.graph.node
        if n.op_type == "Gather" and n.input[0] in inits and tuple(inits[n.input[0]].dims) == shape
    }
    if not tables:
        return None
    w = numpy_helper.to_array(weight)
    if w.dtype != np.float32:
        return None
    for name in sorted(tables):
        table = numpy_helper.to_array(inits[name])
        if table.dtype == np.float32 and np.array_equal(table, w.T):
            return name
    return None


def add_rescoring(model: Any, logits: str, table: str, top_k: int = TOP_K) -> None:
    """Rescore the `top_k` best of the scores `logits` (produced by a 4-bit MatMulNBits over hidden
    states h) exactly with the fp32 rows of `table`; `logits` keeps its name. In place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producer = next((n for n in graph.node if logits in n.output), None)
    if producer is None or producer.op_type != "MatMulNBits":
        raise ValueError(f"{logits!r} is not produced by a MatMulNBits node")
    vocab = next(a.i for a in producer.attribute if a.name == "N")
    hidden = producer.input[0]
    base = (producer.name or logits) + "_rs"
    approx = base + "_approx"
    producer.output[0] = approx
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.asarray([min(top_k, vocab)], dtype=np.int64), base + "_k"),
            numpy_helper.from_array(np.asarray([-1], dtype=np.int64), base + "_axis"),
        ]
    )
    nodes = [
        helper.make_node(
            "TopK",
            [approx, base + "_k"],
            [base + "_values", base + "_ids"],
            axis=-1,
            largest=1,
            sorted=0,
            name=base + "_topk",
        ),
        helper.make_node("Gather", [table, base + "_ids"], [base + "_rows"], name=base + "_rows"),
        helper.make_node("Unsqueeze", [hidden, base + "_axis"], [base + "_column"], name=base + "_col"),
        helper.make_node("MatMul", [base + "_rows", base + "_column"], [base + "_dots"], name=base + "_dot"),
        helper.make_node("Squeeze", [base + "_dots", base + "_axis"], [base + "_exact"], name=base + "_1d"),
        helper.make_node(
            "ScatterElements",
            [approx, base + "_ids", base + "_exact"],
            [logits],
            axis=-1,
            name=base + "_scatter",
        ),
    ]
    at = list(graph.node).index(producer) + 1
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
