"""How much onnxruntime's CPU matrix kernels gain from batching rows: cost per row at 1, 4 and 8 rows.

    python benchmarks/bench_matmul.py [--threads 1] [--rows 1 4 8]

A decode step multiplies one row per running sequence by every weight matrix, so what batching N
streams can gain per step is bounded by how much cheaper a row gets when N rows share one call.
Measured for the kernels and shapes of the default build (SmolLM2-135M, hidden 576, MLP 1536,
vocabulary 49152), random weights, each figure the mean of many calls in one process:
- MatMulNBits, 4-bit block 32 and 8-bit block 32, accuracy_level 4 (what `tritonform build`
  writes for the int4 default: every projection at 4 bits, the vocabulary one at 8; weight-only,
  block-wise, int8 activations per block of 32 inside the kernel);
- plain fp32 MatMul (onnxruntime's SGEMM, 4 bytes a weight), the reference for how a kernel batches:
  on AVX2 the 8-bit kernel's cost grows almost linearly with rows, the SGEMM's barely;
- MatMulInteger (u8 x s8, the QGEMM kernel of dynamic quantisation), for comparison: it batches
  better, but takes one activation scale per tensor (or per row) and one weight scale per column,
  which fails this model's quality gate: next-token agreement with fp32 ~66% with onnxruntime's
  dynamic quantisation (model_repo/quantize.py); 87-90% with a scale per row and per column,
  95.0% with the per-column 8-bit weights alone (held-out text, simulated in PyTorch).
Prints ms per call and per row, and each kernel's gain per row from 1 row to the most rows asked.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

SHAPES = {  # (K, N) of SmolLM2-135M's projections, the vocabulary one last
    "attention qkv": (576, 960),
    "mlp gate+up": (576, 3072),
    "mlp down": (1536, 576),
    "vocabulary": (576, 49152),
}


def _session(node: Any, inputs: list[Any], initializers: list[Any], output: Any, threads: int) -> Any:
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph([node], "g", inputs, [output], initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def matmul_nbits(k: int, n: int, bits: int, block: int, threads: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    blocks = k // block
    weights = rng.integers(0, 256, size=(n, blocks, block * bits // 8), dtype=np.uint8)
    scales = (rng.random(n * blocks, dtype=np.float32) * 0.01).astype(np.float32)
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "S"],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=block,
        accuracy_level=4,
    )
    return _session(
        node,
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [numpy_helper.from_array(weights, "B"), numpy_helper.from_array(scales, "S")],
        helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n]),
        threads,
    )


def matmul_fp32(k: int, n: int, threads: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    weights = (np.random.default_rng(0).random((k, n), dtype=np.float32) - 0.5).astype(np.float32)
    return _session(
        helper.make_node("MatMul", ["A", "B"], ["Y"]),
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [numpy_helper.from_array(weights, "B")],
        helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n]),
        threads,
    )


def matmul_integer(k: int, n: int, threads: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).integers(-127, 128, size=(k, n), dtype=np.int8)
    node = helper.make_node("MatMulInteger", ["A", "B", "ZA"], ["Y"])
    return _session(
        node,
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", k])],
        [numpy_helper.from_array(weights, "B"), numpy_helper.from_array(np.array(128, np.uint8), "ZA")],
        helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", n]),
        threads,
    )


def ms_per_call(session: Any, a: np.ndarray, budget_s: float = 0.3) -> float:
    for _ in range(3):
        session.run(None, {"A": a})
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget_s or calls < 5:
        session.run(None, {"A": a})
        calls += 1
    return 1000 * elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8], help="rows per call")
    args = parser.parse_args()
    rows = sorted(set(args.rows))
    print(
        f"{'shape':14s} {'kernel':22s} "
        + " ".join(f"{f'{m} rows: ms (/row)':>22s}" for m in rows)
        + "   gain/row"
    )
    for shape, (k, n) in SHAPES.items():
        kernels = {
            "MatMulNBits 4-bit b32": matmul_nbits(k, n, 4, 32, args.threads),
            "MatMulNBits 8-bit b32": matmul_nbits(k, n, 8, 32, args.threads),
            "MatMul fp32": matmul_fp32(k, n, args.threads),
            "MatMulInteger u8s8": matmul_integer(k, n, args.threads),
        }
        for name, session in kernels.items():
            dtype = np.uint8 if "Integer" in name else np.float32
            costs = []
            for m in rows:
                a = (np.random.default_rng(m).random((m, k)) * (200 if dtype == np.uint8 else 1)).astype(
                    dtype
                )
                costs.append(ms_per_call(session, a))
            cells = " ".join(f"{c:>12.3f} ({c / m:.3f})" for c, m in zip(costs, rows, strict=True))
            gain = (costs[0] / rows[0]) / (costs[-1] / rows[-1])
            print(f"{shape:14s} {name:22s} {cells}   {gain:5.2f}x")


if __name__ == "__main__":
    main()
