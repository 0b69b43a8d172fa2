"""Fold each 4-bit projection's three kinds of nodes into tritonform's one CPU operator.

The model repository's graph is standard onnxruntime: every 4-bit projection with exact block offsets is
MatMulNBits (the q * scale part) + a block sum of its input + a MatMul by the offsets + an Add (see
model_repo/quantize_int4.py). On the CPU, `fuse_q4_offsets` rewrites each such group into one
`tritonform.Q4OffsetMatMul` node (runtime/kernels/q4_offset_matmul.c) that reads the same packed weights
and computes the same sum in one pass; the block-sum nodes go once nothing else reads them. The weights
stay bit for bit what the build wrote; only the offsets are transposed to the [N, blocks] order the
kernel walks.

Where: only on onnxruntime's CPU provider, only when $TRITONFORM_CPU_OPS names the compiled library
(`tritonform serve` builds it: model_repo/cpu_ops.py) and only when the library runs a vector kernel on
this CPU (AVX-512 VNNI or AVX2; its plain-C one is slower than onnxruntime's own). Otherwise the session
runs the repository's graph as it is, and `CpuOps.state` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DOMAIN = "tritonform"
OP = "Q4OffsetMatMul"
CPU_OPS_ENV = "TRITONFORM_CPU_OPS"  # the library's path, or "off"
VECTOR_KERNELS = ("avx512vnni", "avx2")


@dataclass(frozen=True)
class CpuOps:
    """What the engine's session runs: `library` (None: the repository's graph as it is), the kernel the
    library picked on this CPU, how many projections were fused, and a line for logs."""

    library: str | None
    kernel: str
    fused: int
    state: str


def cpu_ops_library(given: str | None = None) -> tuple[str | None, str, str]:
    """(library path or None, its kernel on this CPU, why not when None) from `given` (a path or "off"),
    by default $TRITONFORM_CPU_OPS."""
    given = (os.environ.get(CPU_OPS_ENV, "") if given is None else given).strip()
    if not given:
        return None, "", f"off (${CPU_OPS_ENV} unset: `tritonform serve` sets it)"
    if given.lower() == "off":
        return None, "", f"off (${CPU_OPS_ENV}=off)"
    if not Path(given).is_file():
        return None, "", f"off ({given}: no such file)"
    try:
        kernel = library_kernel(given)
    except (OSError, AttributeError) as exc:
        return None, "", f"off ({given} does not load: {exc})"
    if kernel not in VECTOR_KERNELS:
        return None, kernel, "off (no AVX-512 VNNI or AVX2 on this CPU: onnxruntime's kernels are faster)"
    return given, kernel, ""


def library_kernel(library: str) -> str:
    """The kernel the library runs on this CPU: "avx512vnni", "avx2" or "c". Raises OSError when the
    file is no shared library, AttributeError when it is not tritonform's."""
    kernel_name = ctypes.CDLL(library).tritonform_q4_kernel
    kernel_name.restype = ctypes.c_char_p
    return (kernel_name() or b"").decode()


def session_model(onnx_path: Path, provider: str, library: str | None = None) -> tuple[Path, CpuOps]:
    """What to open an onnxruntime session on: the fused graph (a file, see `fused_graph`) with the
    library to register, or `onnx_path` unchanged (a GPU provider, no library, nothing to fuse).
    `library`: a path or "off"; by default $TRITONFORM_CPU_OPS."""
    if provider != "CPUExecutionProvider":
        return onnx_path, CpuOps(None, "", 0, f"off ({provider} runs the repository's graph)")
    library, kernel, why = cpu_ops_library(library)
    if library is None:
        return onnx_path, CpuOps(None, kernel, 0, why)
    try:
        fused_path, fused = fused_graph(onnx_path)
    except Exception as exc:  # no writable cache, a full disk, no onnx here: the graph as it is
        why = f"off (the fused graph could not be made: {type(exc).__name__}: {exc})"
        return onnx_path, CpuOps(None, kernel, 0, why)
    if fused_path is None:
        return onnx_path, CpuOps(None, kernel, 0, "off (no 4-bit projection with block offsets here)")
    state = f"on ({fused} projections in {OP}, {kernel})"
    return fused_path, CpuOps(library, kernel, fused, state)


def fused_graph(onnx_path: Path) -> tuple[Path | None, int]:
    """(the fused copy of `onnx_path`, projections fused), or (None, 0) when it has none to fuse.

    The copy is written once, with its weights in an external file as the repository's, under
    ${TRITONFORM_CACHE:-~/.cache/tritonform}/cpu-ops/graphs/<key>/, the key covering the model file, its
    weights file's size and time and this module's code; onnxruntime then opens it as it opens the
    repository's graph (no copy of the model in Python's memory) and later loads skip the rewrite. The
    newest GRAPHS_KEPT copies are kept. Writers racing for one key: the first to finish wins."""
    import json

    onnx_path = Path(onnx_path).resolve()
    key = hashlib.sha256(onnx_path.read_bytes())
    key.update(Path(__file__).read_bytes())
    for data in sorted(onnx_path.parent.glob(onnx_path.name + ".data*")):
        key.update(f"{data.name} {data.stat().st_size} {data.stat().st_mtime_ns}".encode())
    root = _graphs_dir()
    entry = root / key.hexdigest()[:24]
    if not (entry / "fused.json").is_file():
        _write_fused(onnx_path, entry)
    os.utime(entry)  # recently used: kept by the pruning below
    fused = int(json.loads((entry / "fused.json").read_text())["fused"])
    _prune(root)
    return (entry / "model.onnx" if fused else None), fused


GRAPHS_KEPT = 4


def _graphs_dir() -> Path:
    cache = os.environ.get("TRITONFORM_CACHE") or str(Path.home() / ".cache" / "tritonform")
    return Path(cache) / "cpu-ops" / "graphs"


def _write_fused(onnx_path: Path, entry: Path) -> None:
    import json
    import shutil
    import tempfile

    import onnx

    entry.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(onnx_path))
    fused = fuse_q4_offsets(model)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=entry.parent))
    try:
        if fused:
            target = str(partial / "model.onnx")
            onnx.save(model, target, save_as_external_data=True, location="model.onnx.data")
        (partial / "fused.json").write_text(json.dumps({"fused": fused, "source": str(onnx_path)}))
        del model
        try:
            os.replace(partial, entry)
        except OSError:  # another process wrote this key first: theirs is the same graph
            if not (entry / "fused.json").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _prune(root: Path) -> None:
    import shutil

    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_mtime)
    for old in entries[:-GRAPHS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def fuse_q4_offsets(model: Any) -> int:
    """Rewrite every MatMulNBits + offset-correction group of an `onnx.ModelProto` in place into one
    Q4OffsetMatMul node. Returns how many groups were fused (0: the graph has none; nothing changes)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    outputs = {o.name for o in graph.output}
    inits = {i.name: i for i in graph.initializer}
    nodes = list(graph.node)  # one wrapper a node: the maps below key on id()
    producer = {o: n for n in nodes for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    drop: set[int] = set()
    replace: dict[int, Any] = {}
    new_inits: list[Any] = []
    for node in nodes:
        group = _group(node, inits, producer, readers, outputs)
        if group is None:
            continue
        add, correction, offsets_name, k, n = group
        blocks = -(-k // 32)
        offsets = numpy_helper.to_array(inits[offsets_name]).astype(np.float32)  # [blocks, N]
        if offsets.shape != (blocks, n):
            continue
        by_column = np.ascontiguousarray(offsets.T).reshape(-1)  # [N * blocks], the kernel's order
        by_column_name = f"{offsets_name}_by_column"
        new_inits.append(numpy_helper.from_array(by_column, by_column_name))
        fused = helper.make_node(
            OP,
            [node.input[0], node.input[1], node.input[2], by_column_name],
            list(add.output),
            name=f"{node.name or node.output[0]}_q4offset",
            domain=DOMAIN,
            K=k,
            N=n,
        )
        replace[id(add)] = fused
        drop.update((id(node), id(correction)))
    if not replace:
        return 0
    nodes = [replace.get(id(n), n) for n in nodes if id(n) not in drop]
    nodes = _without_dead_block_sums(nodes, outputs)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return len(replace)


def _group(
    node: Any,
    inits: dict[str, Any],
    producer: dict[str, Any],
    readers: dict[str, list[Any]],
    outputs: set[str],
) -> Any:
    """(Add, correction MatMul, offsets initializer name, K, N) when `node` is a 4-bit MatMulNBits whose only
    reader is an Add with a MatMul(block sums of the same input, constant offsets), neither of the two
    partial results being read by anything else; else None."""
    from onnx import helper

    if node.op_type != "MatMulNBits" or node.domain != "com.microsoft" or len(node.input) != 3:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("bits") != 4 or attrs.get("block_size") != 32 or node.input[1] not in inits:
        return None
    if node.input[2] not in inits:
        return None
    users = readers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add" or node.output[0] in outputs:
        return None
    add = users[0]
    other = [i for i in add.input if i != node.output[0]]
    if len(other) != 1:
        return None
    correction = producer.get(other[0])
    if correction is None or correction.op_type != "MatMul" or len(readers.get(other[0], [])) != 1:
        return None
    if other[0] in outputs:
        return None
    sums, offsets = correction.input
    if offsets not in inits or _block_sum_source(producer.get(sums), producer) != node.input[0]:
        return None
    return add, correction, offsets, int(attrs["K"]), int(attrs["N"])


def _block_sum_source(node: Any, producer: dict[str, Any]) -> str | None:
    """The tensor whose block sums `node` computes (MatMul by the 0/1 matrix, or Reshape + ReduceSum)."""
    if node is None:
        return None
    if node.op_type == "MatMul" and node.input[1].endswith("_block_sum"):  # quantize_int4's 0/1 matrix
        return str(node.input[0])
    if node.op_type == "ReduceSum":
        reshape = producer.get(node.input[0])
        if reshape is not None and reshape.op_type == "Reshape" and reshape.input[1].endswith("_block_shape"):
            return str(reshape.input[0])
    return None


def _without_dead_block_sums(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """`nodes` less the block-sum nodes (and their Reshapes) that nothing reads any more."""
    while True:
        read = {i for n in nodes for i in n.input} | outputs
        dead = [
            n
            for n in nodes
            if n.op_type in ("MatMul", "ReduceSum", "Reshape")
            and not any(o in read for o in n.output)
            and (n.op_type != "MatMul" or n.input[1].endswith("_block_sum"))
        ]
        if not dead:
            return nodes
        gone = {id(n) for n in dead}
        nodes = [n for n in nodes if id(n) not in gone]
