"""The GPU path of the engine, run here with onnxruntime's CPU provider: the KV cache kept in OrtValues on
the session's device, every call through IO binding, joins and leaves re-stacked by ONNX graphs on that
device (runtime/kv_store.py). On a GPU the same code runs with device "cuda"; here it must give exactly
the tokens of the host path the CPU uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from model_repo.runtime.engine import Engine
from model_repo.runtime.kv_store import DeviceKV, HostKV
from model_repo.runtime.sampling import SamplingParams

PROMPTS = {"a": "hello", "b": "the quick brown fox jumps over", "c": "x", "d": "a cat sat on the mat"}


def _interleaved(engine: Engine) -> dict[str, list[int]]:
    """Four greedy sequences of different lengths joining one after another and leaving at different
    steps: every cache operation (join, leave, growth) happens."""
    batch = engine.new_batch()
    out: dict[str, list[int]] = {}
    for k, (rid, text) in enumerate(PROMPTS.items()):
        first = batch.add(rid, engine.encode(text), SamplingParams(max_tokens=3 + 9 * k, ignore_eos=True))
        out.setdefault(rid, []).append(first.token_id)
        for o in batch.step():
            out.setdefault(o.request_id, []).append(o.token_id)
    while len(batch):
        for o in batch.step():
            out.setdefault(o.request_id, []).append(o.token_id)
    return out


@pytest.mark.parametrize("export", ["tiny_llama_export", "tiny_gpt2_export", "tiny_llama_fp16"])
def test_device_bound_engine_gives_the_host_paths_tokens(export: str, request: pytest.FixtureRequest) -> None:
    """Right-padded (GroupQueryAttention), left-padded (plain attention) and fp16 graphs: single streams
    and a batch with joins and leaves give identical tokens; the cache really is OrtValues re-stacked by
    the graphs, not numpy."""
    model_dir: Path = request.getfixturevalue(export)
    host = Engine.load(model_dir, num_threads=1)
    device = Engine.load(model_dir, num_threads=1, io_binding=True)
    assert not host.device_bound and device.device_bound and isinstance(device.kv, DeviceKV)
    ids = host.encode("hello world, this is a test")
    assert device.greedy_ids(ids, 24) == host.greedy_ids(ids, 24)
    assert _interleaved(device) == _interleaved(host)
    assert device.kv.calls > 0

    batch = device.new_batch()
    batch.add("x", ids, SamplingParams(max_tokens=4, ignore_eos=True))
    batch.step()
    cache = getattr(batch, "cache", None) or batch.past  # type: ignore[attr-defined]
    assert all(isinstance(v, ort.OrtValue) for v in cache)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_device_graphs_restack_like_numpy(dtype: type) -> None:
    """stack (left and right padding) and select (rows, a column window, zero padding past the end)
    give the same arrays on OrtValues as in numpy, for fp32 and fp16 caches."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    b = rng.standard_normal((1, 3, 7, 4)).astype(dtype)
    host = HostKV()
    device = DeviceKV(np.dtype(dtype).name, ["CPUExecutionProvider"], "cpu", 0)
    on_device = ort.OrtValue.ortvalue_from_numpy(a)
    for left in (True, False):
        np.testing.assert_array_equal(device.stack(on_device, b, 9, left).numpy(), host.stack(a, b, 9, left))
    for rows, start, width in (([1], 0, 5), ([1, 0], 2, 3), ([0, 1], 1, 8)):
        got = device.select(on_device, rows, start, width).numpy()
        np.testing.assert_array_equal(got, host.select(a, rows, start, width))
    assert device.select(on_device, [1, 0], 2, 3).numpy().shape == (2, 3, 3, 4)


def test_the_stored_graphs_are_what_the_generator_writes() -> None:
    """runtime/kv_graphs.py is generated (the runtime may not import onnx): it must match the generator."""
    from model_repo.kv_graphs import TARGET, render

    assert TARGET.read_text(encoding="utf-8") == render(), "run `python -m model_repo.kv_graphs`"
