"""4-bit weights with exact per-block offsets: Q4_1-style weights survive unchanged, and the graph
(fast MatMulNBits + offset correction) computes what the dequantised weights would."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_repo import quantize_int4
from model_repo.quantize_int4 import (
    BLOCK,
    dequantize_blocks,
    merge_sibling_matmuls,
    quantize_blocks,
    quantize_int4_with_offsets,
)


def _q4_1_weight(k: int, n: int, seed: int = 0) -> np.ndarray:
    """A weight as a Q4_1 checkpoint stores it: per block of 32 along K, q * d + m with a float m."""
    rng = np.random.default_rng(seed)
    blocks = -(-k // BLOCK)
    q = rng.integers(0, 16, size=(n, blocks, BLOCK)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 15  # every block uses its whole range, as Q4_1's min/max rounding does
    d = rng.uniform(0.001, 0.05, size=(n, blocks, 1)).astype(np.float32)
    m = rng.uniform(-0.4, 0.1, size=(n, blocks, 1)).astype(np.float32)
    return (q * d + m).reshape(n, blocks * BLOCK)[:, :k].T.copy()


def test_weights_on_a_q4_1_grid_are_reproduced_exactly() -> None:
    w = _q4_1_weight(96, 40)
    back = dequantize_blocks(*quantize_blocks(w), k=96)
    np.testing.assert_allclose(back, w, rtol=0, atol=1e-6)


def test_other_weights_stay_within_half_a_step_of_their_block() -> None:
    w = np.random.default_rng(1).normal(size=(80, 24)).astype(np.float32)  # K not a multiple of 32
    packed, scales, offsets = quantize_blocks(w)
    back = dequantize_blocks(packed, scales, offsets, k=80)
    step = np.repeat(scales.reshape(24, -1), BLOCK, axis=1)[:, :80].T
    assert np.all(np.abs(back - w) <= step / 2 + 1e-6)


def _model(weights: dict[str, np.ndarray], k: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, k])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in weights]
    nodes = [helper.make_node("MatMul", ["x", f"{name}_w"], [name], name=name) for name in weights]
    inits = [numpy_helper.from_array(w, f"{name}_w") for name, w in weights.items()]
    graph = helper.make_graph(nodes, "g", [x], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_quantised_graph_computes_with_the_dequantised_weights() -> None:
    k = 64
    weights = {"q": _q4_1_weight(k, 48, 2), "k": _q4_1_weight(k, 16, 3), "v": _q4_1_weight(k, 16, 4)}
    model = _model(weights, k)
    assert merge_sibling_matmuls(model) == 1
    assert quantize_int4_with_offsets(model, accuracy_level=0) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 1 and "Split" in ops
    assert "ReduceSum" not in ops  # a 64 x 2 block-sum matrix is cheaper to read than two nodes
    x = np.random.default_rng(5).normal(size=(1, 3, k)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(["q", "k", "v"], session.run(["q", "k", "v"], {"x": x}), strict=True))
    for name, w in weights.items():
        np.testing.assert_allclose(got[name], x @ w, rtol=1e-4, atol=1e-4)


def test_block_sums_fall_back_to_a_matmul_when_k_is_not_whole_blocks() -> None:
    """K = 80 (two and a half blocks): the block sums come from a 0/1 matrix, and the product is
    still the dequantised weight's."""
    k = 80
    weights = {"w": _q4_1_weight(k, 16, 9)}
    model = _model(weights, k)
    assert quantize_int4_with_offsets(model, accuracy_level=0) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceSum" not in ops and ops.count("MatMul") == 2
    x = np.random.default_rng(10).normal(size=(1, 3, k)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["w"], {"x": x})[0], x @ weights["w"], rtol=1e-4, atol=1e-4)


def test_wide_inputs_sum_their_blocks_without_a_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past BLOCK_SUM_MATRIX_BYTES the block sums come from Reshape + ReduceSum (no 0/1 matrix to read
    each call), with the same product."""
    monkeypatch.setattr(quantize_int4, "BLOCK_SUM_MATRIX_BYTES", 0)
    k = 64
    weights = {"w": _q4_1_weight(k, 16, 11)}
    model = _model(weights, k)
    assert quantize_int4_with_offsets(model, accuracy_level=0) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceSum" in ops and ops.count("MatMul") == 1
    x = np.random.default_rng(12).normal(size=(1, 3, k)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["w"], {"x": x})[0], x @ weights["w"], rtol=1e-4, atol=1e-4)
