"""Where a batch's KV cache lives and how it is re-stacked when sequences join or leave.

`DecodeBatch` (batch.py) never touches cache tensors itself: it asks its engine's store for two operations
over one cache tensor [rows, kv_heads, columns, head_dim]:

    stack(a, b, width, left)     a's rows then b's, each zero-padded to `width` columns (on the left when
                                 `left`, else on the right)
    select(x, rows, start, width) rows `rows` of x, columns start..start+width-1 (zero-padded past x's end)

`HostKV` keeps the cache in numpy arrays (the CPU provider's path, where onnxruntime reads and writes host
memory anyway). `DeviceKV` keeps it in onnxruntime OrtValues on the session's device and runs both
operations as tiny ONNX graphs (runtime/kv_graphs.py) on the same execution provider, so with CUDA the
cache never crosses to the host: not on a step (the engine's IO binding), not on a join or a leave.
With the CPU provider, `DeviceKV` runs the very same code on OrtValues in host memory; the tests hold it
to the same tokens as `HostKV`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .kv_graphs import graph

# the element type of a cache input as onnxruntime names it -> (numpy dtype, kv_graphs name)
ORT_CACHE_TYPES: dict[str, tuple[Any, str]] = {
    "tensor(float)": (np.float32, "float32"),
    "tensor(float16)": (np.float16, "float16"),
}


class KVStore(Protocol):
    """The two cache operations a batch needs (see the module docstring)."""

    def stack(self, a: Any, b: Any, width: int, left: bool) -> Any: ...

    def select(self, x: Any, rows: Sequence[int], start: int, width: int) -> Any: ...


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, np.ndarray) else tuple(value.shape())


def _to_numpy(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


class HostKV:
    """The cache in numpy arrays (OrtValues handed in are copied to numpy first)."""

    def stack(self, a: Any, b: Any, width: int, left: bool) -> np.ndarray:
        a, b = _to_numpy(a), _to_numpy(b)
        rows_a, heads, cols_a, head_dim = a.shape
        buf = np.zeros((rows_a + b.shape[0], heads, width, head_dim), dtype=a.dtype)
        if left:
            buf[:rows_a, :, width - cols_a :] = a
            buf[rows_a:, :, width - b.shape[2] :] = b
        else:
            buf[:rows_a, :, :cols_a] = a
            buf[rows_a:, :, : b.shape[2]] = b
        return buf

    def select(self, x: Any, rows: Sequence[int], start: int, width: int) -> np.ndarray:
        x = _to_numpy(x)
        window = x[list(rows), :, start : start + width]
        if window.shape[2] == width:
            return np.ascontiguousarray(window)
        buf = np.zeros((window.shape[0], x.shape[1], width, x.shape[3]), dtype=x.dtype)
        buf[:, :, : window.shape[2]] = window
        return buf


class DeviceKV:
    """The cache in OrtValues on `device_type`:`device_id` ("cuda" or "cpu"), re-stacked there by ONNX
    graphs run through IO binding on `providers` (the model session's, TensorRT left out: these graphs
    are a few memory copies)."""

    def __init__(self, dtype_name: str, providers: list[Any], device_type: str, device_id: int) -> None:
        import onnxruntime as ort

        self.device_type, self.device_id = device_type, device_id
        self.dtype_name = dtype_name
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3  # the graphs' symbolic output dims are not warnings worth a log line
        provs = [p for p in providers if (p if isinstance(p, str) else p[0]) != "TensorrtExecutionProvider"]
        self._stack = ort.InferenceSession(graph("stack", dtype_name), sess_options=opts, providers=provs)
        self._select = ort.InferenceSession(graph("select", dtype_name), sess_options=opts, providers=provs)
        self.calls = 0  # graph runs, for tests

    def _bind(self, binding: Any, name: str, value: Any) -> None:
        if isinstance(value, np.ndarray):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        else:
            binding.bind_ortvalue_input(name, value)

    def _run(self, session: Any, inputs: dict[str, Any]) -> Any:
        binding = session.io_binding()
        for name, value in inputs.items():
            self._bind(binding, name, value)
        binding.bind_output("y", self.device_type, self.device_id)
        session.run_with_iobinding(binding)
        self.calls += 1
        return binding.get_outputs()[0]

    def stack(self, a: Any, b: Any, width: int, left: bool) -> Any:
        def pads(cols: int) -> np.ndarray:
            extra = width - cols
            before, after = (extra, 0) if left else (0, extra)
            return np.asarray([0, 0, before, 0, 0, 0, after, 0], dtype=np.int64)

        return self._run(
            self._stack, {"a": a, "b": b, "pads_a": pads(_shape(a)[2]), "pads_b": pads(_shape(b)[2])}
        )

    def select(self, x: Any, rows: Sequence[int], start: int, width: int) -> Any:
        stop = min(start + width, _shape(x)[2])
        return self._run(
            self._select,
            {
                "x": x,
                "rows": np.asarray(list(rows), dtype=np.int64),
                "starts": np.asarray([start], dtype=np.int64),
                "ends": np.asarray([stop], dtype=np.int64),
                "pads": np.asarray([0, 0, 0, 0, 0, 0, width - (stop - start), 0], dtype=np.int64),
            },
        )

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """A zero-filled OrtValue of `shape` on the device (an empty past for a first call)."""
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(
            np.zeros(shape, dtype=dtype), self.device_type, self.device_id
        )
