"""The int4 output projection tied to the embedding: 4-bit scores for every token, the best rescored in
fp32 (model_repo.rescored_head). Protects: the rescored scores are exactly the fp32 projection's, the
winner is the fp32 winner, and an untied or different table is never used for rescoring."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from model_repo.quantize import INT4_RESCORED_HEAD, _matmul_nbits
from model_repo.rescored_head import add_rescoring, tied_table

HIDDEN, VOCAB = 64, 700


def _head_model(weight: np.ndarray, table: np.ndarray) -> Any:
    """ids -> Gather(table) (the embedding), h -> MatMul(weight) -> logits (the output projection)."""
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embedding"),
            helper.make_node("MatMul", ["h", "weight"], ["logits"], name="head"),
        ],
        "head",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["b", "s", HIDDEN]),
        ],
        [
            helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["b", "s", HIDDEN]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", VOCAB]),
        ],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(table, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _weights(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((HIDDEN, VOCAB)).astype(np.float32) * 0.1


def test_the_best_scores_are_the_fp32_ones_and_the_winner_is_the_fp32_winner() -> None:
    weight = _weights()
    model = _head_model(weight, np.ascontiguousarray(weight.T))
    assert tied_table(model, "head") == "table"
    model = _matmul_nbits(model, 4, INT4_RESCORED_HEAD, only={"head"})
    add_rescoring(model, "logits", "table", top_k=16)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    h = np.random.default_rng(1).standard_normal((3, 5, HIDDEN)).astype(np.float32)
    ids = np.zeros((3, 5), dtype=np.int64)
    _, got = session.run(None, {"ids": ids, "h": h})
    exact = h @ weight
    rescored = np.isclose(got, exact, rtol=0, atol=1e-5)
    # 16 scores per position are exact (the 4-bit ones elsewhere are off by more than 1e-5)
    assert (rescored.sum(-1) >= 16).all() and (rescored.sum(-1) < VOCAB // 2).all()
    assert (got.argmax(-1) == exact.argmax(-1)).all()
    # each position's 16 best exact scores are among the rescored ones
    best = np.argsort(-exact, axis=-1)[..., :16]
    assert np.take_along_axis(rescored, best, -1).mean() > 0.9
    # the rest are the 4-bit scores: close, not exact
    assert np.corrcoef(got.ravel(), exact.ravel())[0, 1] > 0.98


def test_a_table_that_is_not_the_heads_weight_is_not_used() -> None:
    weight = _weights()
    assert tied_table(_head_model(weight, np.ascontiguousarray(weight.T) + 1e-3), "head") is None
    assert tied_table(_head_model(weight, _weights(seed=2).T.copy()), "head") is None
    assert tied_table(_head_model(weight, np.ascontiguousarray(weight.T)), "no-such-node") is None
