"""4-bit weights with exact per-block offsets: Q4_1-style weights survive unchanged, and the graph
(fast MatMulNBits + offset correction) computes what the dequantised weights would."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from model_repo.quantize_int4 import (
    BLOCK,
    dequantize_blocks,
    merge_sibling_matmuls,
    quantize_blocks,
    quantize_int4_with_offsets,
    split_blocks,
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
    x = np.random.default_rng(5).normal(size=(1, 3, k)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(["q", "k", "v"], session.run(["q", "k", "v"], {"x": x}), strict=True))
    for name, w in weights.items():
        np.testing.assert_allclose(got[name], x @ w, rtol=1e-4, atol=1e-4)


def test_split_blocks_keeps_the_weights_and_halves_the_kernel_block() -> None:
    """Kernel blocks of 16 inside offset blocks of 32: the same dequantised weights, each scale twice."""
    w = _q4_1_weight(64, 8, 6)
    packed, scales, offsets = quantize_blocks(w)
    packed16, scales16 = split_blocks(packed, scales, 2)
    assert packed16.shape == (8, 4, 8) and scales16.shape == (8 * 4,)
    q = np.empty((8, 4, 16), dtype=np.float32)
    q[..., 0::2], q[..., 1::2] = packed16 & 0x0F, packed16 >> 4
    w16 = (q - 8.0) * scales16.reshape(8, 4, 1) + np.repeat(offsets.T, 2, axis=1)[..., None]
    np.testing.assert_allclose(w16.reshape(8, 64).T, w, rtol=0, atol=1e-6)


def test_a_matmul_with_kernel_block_16_computes_with_the_dequantised_weights() -> None:
    """`kernel_blocks` runs the chosen MatMul with MatMulNBits block 16; its offsets stay per 32 and
    the product is still the dequantised weight's."""
    k = 96
    weights = {"down": _q4_1_weight(k, 24, 7)}
    model = _model(weights, k)
    assert quantize_int4_with_offsets(model, accuracy_level=0, kernel_blocks={"down": 16}) == 1
    kernel = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    assert next(a.i for a in kernel.attribute if a.name == "block_size") == 16
    x = np.random.default_rng(8).normal(size=(1, 3, k)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["down"], {"x": x})[0], x @ weights["down"], rtol=1e-4, atol=1e-4)
