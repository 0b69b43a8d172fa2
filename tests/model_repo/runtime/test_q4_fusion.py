"""tritonform's CPU operator for 4-bit projections with exact block offsets: the graph rewrite keeps the
weights and drops the correction nodes, and the operator computes what onnxruntime's standard graph
computes (MatMulNBits at accuracy level 4 + the offset correction) on each of its kernels."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_repo.quantize_int4 import merge_sibling_matmuls, quantize_int4_with_offsets
from model_repo.runtime import q4_fusion
from model_repo.runtime.q4_fusion import CPU_OPS_ENV, DOMAIN, OP, fuse_q4_offsets, session_model

# K: 64 (block sums by a 0/1 matrix), 100 (a partial last block), 1536 (block sums by Reshape + ReduceSum)
SHAPES = {"x": 64, "h": 100, "w": 1536}


def _q4_1_weight(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """A weight as a Q4_1 GGUF stores it: per block of 32 along K, q * d + m, d and m float16."""
    blocks = -(-k // 32)
    q = rng.integers(0, 16, size=(n, blocks, 32)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 15  # each block spans its whole range, as Q4_1's min/max rounding does
    d = rng.uniform(0.001, 0.05, size=(n, blocks, 1)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.4, 0.1, size=(n, blocks, 1)).astype(np.float16).astype(np.float32)
    return (q * d + m).reshape(n, blocks * 32)[:, :k].T.astype(np.float32)


def _float_model(batch_dims: tuple[int, ...] = (3,), q4_1: bool = False) -> onnx.ModelProto:
    """Four projections of three inputs, quantised as the build does: x's two (merged into one), h's
    and w's; each input's width takes another way of summing blocks (see SHAPES). `q4_1`: weights on a
    Q4_1 grid (the default model's), else any floats."""
    rng = np.random.default_rng(0)

    def weight(name: str, k: int, n: int) -> onnx.TensorProto:
        if q4_1:
            return numpy_helper.from_array(_q4_1_weight(rng, k, n), name)
        w = rng.normal(size=(k, n)) * 0.1 + rng.normal(size=(1, n)) * 0.05
        return numpy_helper.from_array(w.astype(np.float32), name)

    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [*batch_dims, k]) for n, k in SHAPES.items()
    ]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [*batch_dims, c])
        for n, c in (("a", 40), ("b", 24), ("c", 33), ("d", 48))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a"]),
        helper.make_node("MatMul", ["x", "wb"], ["b"]),
        helper.make_node("MatMul", ["h", "wc"], ["c"]),
        helper.make_node("MatMul", ["w", "wd"], ["d"]),
    ]
    inits = [weight("wa", 64, 40), weight("wb", 64, 24), weight("wc", 100, 33), weight("wd", 1536, 48)]
    graph = helper.make_graph(nodes, "projections", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model = onnx.shape_inference.infer_shapes(model)
    merge_sibling_matmuls(model)
    quantize_int4_with_offsets(model, 4)
    return model


def _feeds(batch_dims: tuple[int, ...] = (3,)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {n: rng.normal(size=(*batch_dims, k)).astype(np.float32) for n, k in SHAPES.items()}


def _run(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], library: str | None = None
) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if library:
        options.register_custom_ops_library(library)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, feeds)]


def test_fusion_keeps_the_weights_and_leaves_one_node_a_projection() -> None:
    model = _float_model()
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert fuse_q4_offsets(model) == 3  # the merged a/b projection, c, d
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(OP) == 3 and "MatMulNBits" not in ops and "MatMul" not in ops
    assert not {"ReduceSum", "Reshape", "Add"} & set(ops)  # block sums and corrections are gone
    assert any(o.domain == DOMAIN for o in model.opset_import)
    after = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for name, packed in before.items():
        if name.endswith(("_q4", "_scales")):
            np.testing.assert_array_equal(after[name], packed)  # bit for bit
        if name.endswith("_offsets"):  # transposed to [N, blocks], same values
            np.testing.assert_array_equal(after[name + "_by_column"], packed.T.reshape(-1))


def test_a_graph_without_the_pattern_is_left_alone() -> None:
    model = _float_model()
    add = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    model.graph.output.append(helper.make_tensor_value_info(add.output[0], TensorProto.FLOAT, None))
    fused = fuse_q4_offsets(model)  # that projection's raw 4-bit output is read elsewhere: kept
    assert fused == 2 and [n.op_type for n in model.graph.node].count("MatMulNBits") == 1
    plain = helper.make_model(helper.make_graph([], "empty", [], []))
    assert fuse_q4_offsets(plain) == 0 and len(plain.opset_import) == 1


def _tables(library: str) -> tuple[int, int]:
    """(kernels created with float16 tables, with float32 ones) in this process, as the library counts."""
    count = ctypes.CDLL(library).tritonform_q4_tables
    count.restype = ctypes.c_int64
    return int(count(1)), int(count(0))


@pytest.mark.parametrize("q4_1", [False, True], ids=["any-weights", "q4_1-grid"])
@pytest.mark.parametrize("batch_dims", [(1,), (3,), (2, 5)])
def test_the_operator_computes_what_the_standard_graph_computes(
    cpu_ops_library: str, batch_dims: tuple[int, ...], q4_1: bool
) -> None:
    """Same activation rounding (int8 by blocks of 32) as MatMulNBits at accuracy level 4: the two agree
    to float rounding (2e-7 of the output's range measured), far closer than either is to the exact
    product (~0.5%). Weights on a Q4_1 grid keep their scales and lows in float16 on the vector kernels
    (losslessly: float16 is what Q4_1 stores); other weights keep float32."""
    model = _float_model(batch_dims, q4_1)
    feeds = _feeds(batch_dims)
    standard = _run(model, feeds)
    fuse_q4_offsets(model)
    before = _tables(cpu_ops_library)
    fused = _run(model, feeds, cpu_ops_library)
    after = _tables(cpu_ops_library)
    for want, got in zip(standard, fused, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
    half = q4_1 and q4_fusion.library_kernel(cpu_ops_library) in q4_fusion.VECTOR_KERNELS
    assert (after[0] - before[0], after[1] - before[1]) == ((3, 0) if half else (0, 3))


KERNEL_SCRIPT = """
import json, sys
import numpy as np
from tests.model_repo.runtime.test_q4_fusion import _float_model, _feeds, _run
from model_repo.runtime.q4_fusion import fuse_q4_offsets
out = []
for q4_1 in (False, True):
    model = _float_model((4,), q4_1)
    fuse_q4_offsets(model)
    out += [o.tolist() for o in _run(model, _feeds((4,)), sys.argv[1])]
print(json.dumps(out))
"""


def test_every_kernel_gives_the_same_result(cpu_ops_library: str) -> None:
    """The library picks AVX-512 VNNI, AVX2 or plain C by what the CPU has, once a process; each is
    forced in its own process ($TRITONFORM_Q4_KERNEL) and all must agree with the plain C one."""
    kernel = q4_fusion.library_kernel(cpu_ops_library)
    forced = {"avx512vnni": ["c", "avx2", "avx512"], "avx2": ["c", "avx2"]}.get(kernel, ["c"])
    results = {}
    root = Path(__file__).resolve().parents[3]
    for name in forced:
        out = subprocess.run(
            [sys.executable, "-c", KERNEL_SCRIPT, cpu_ops_library],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env={"TRITONFORM_Q4_KERNEL": name, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        )
        results[name] = [np.asarray(o, dtype=np.float32) for o in json.loads(out.stdout)]
    assert len(results) == len(forced) >= 2 or kernel not in q4_fusion.VECTOR_KERNELS
    for name, outputs in results.items():
        for want, got in zip(results["c"], outputs, strict=True):
            scale = float(np.abs(want).max())
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def test_session_model_fuses_only_on_the_cpu_with_a_working_library(
    tmp_path: Path, cpu_ops_library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_float_model(), str(path))
    monkeypatch.setenv("TRITONFORM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(CPU_OPS_ENV, raising=False)
    source, ops = session_model(path, "CPUExecutionProvider")
    assert source == path and ops.library is None and CPU_OPS_ENV in ops.state
    monkeypatch.setenv(CPU_OPS_ENV, "off")
    assert session_model(path, "CPUExecutionProvider")[1].state == f"off (${CPU_OPS_ENV}=off)"
    monkeypatch.setenv(CPU_OPS_ENV, str(tmp_path / "missing.so"))
    assert "missing.so: no such file" in session_model(path, "CPUExecutionProvider")[1].state
    monkeypatch.setenv(CPU_OPS_ENV, str(path))  # a file, but no library
    assert "does not load" in session_model(path, "CPUExecutionProvider")[1].state
    monkeypatch.setenv(CPU_OPS_ENV, cpu_ops_library)
    source, ops = session_model(path, "CUDAExecutionProvider")
    assert source == path and "CUDAExecutionProvider" in ops.state
    source, ops = session_model(path, "CPUExecutionProvider")
    if ops.kernel not in q4_fusion.VECTOR_KERNELS:  # no AVX2: onnxruntime's kernels are the faster ones
        assert source == path and "AVX2" in ops.state
        return
    assert source != path and ops.library == cpu_ops_library and ops.fused == 3
    assert ops.state.startswith("on (3 projections")
    assert [n.op_type for n in onnx.load(str(source)).graph.node].count(OP) == 3
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("TRITONFORM_CACHE", str(blocked))
    source, ops = session_model(path, "CPUExecutionProvider")
    assert source == path and ops.state.startswith("off (the fused graph could not be made: ")


def test_the_fused_graph_is_written_once_and_old_ones_are_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rewrite runs once per model file (a second load finds it on disk: no copy of the model in
    Python's memory, no rewrite); a changed model gets a new copy; a graph with nothing to fuse is
    remembered as such; only the newest GRAPHS_KEPT copies stay."""
    monkeypatch.setenv("TRITONFORM_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    onnx.save(_float_model(), str(path))
    first, fused = q4_fusion.fused_graph(path)
    assert first is not None and fused == 3 and (first.parent / "model.onnx.data").is_file()
    rewrites: list[Path] = []
    monkeypatch.setattr(q4_fusion, "_write_fused", lambda *a: rewrites.append(a[0]))
    assert q4_fusion.fused_graph(path) == (first, 3) and rewrites == []
    monkeypatch.undo()
    monkeypatch.setenv("TRITONFORM_CACHE", str(tmp_path / "cache"))
    onnx.save(_float_model((5,)), str(path))  # a rebuilt model: another copy
    second, _ = q4_fusion.fused_graph(path)
    assert second is not None and second != first and first.is_file()
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(helper.make_graph([], "empty", [], [])), str(plain))
    assert q4_fusion.fused_graph(plain) == (None, 0)
    for i in range(q4_fusion.GRAPHS_KEPT):
        onnx.save(_float_model((i + 6,)), str(path))
        q4_fusion.fused_graph(path)
    kept = [p for p in (tmp_path / "cache" / "cpu-ops" / "graphs").iterdir() if not p.name.startswith(".")]
    assert len(kept) == q4_fusion.GRAPHS_KEPT and not first.exists()
