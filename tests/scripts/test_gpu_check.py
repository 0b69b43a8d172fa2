"""`scripts/gpu-check` (issue 19): its CPU side. There is no GPU here, so what is tested is the path the
GPU run takes minus CUDA's memory counters: the fit model's prediction for a forward, the verdict on a
predicted/measured ratio, the real transformers forwards with a KV cache and the half-precision parity
check, run on CPU with tiny shapes. The GPU figures themselves come only from running it on a GPU."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from infra.sizing import ModelShape, kv_bytes_per_token, weight_bytes

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu-check"


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


def test_prediction_is_weights_plus_kv_plus_activations_and_the_verdict_uses_the_tolerance() -> None:
    check = _load()
    shape = ModelShape("m", 4, 256, 512, 8, 2, 1000)
    predicted = check.predicted_allocated(shape, batch=2, context=100)
    floor = weight_bytes(shape, "fp16") + kv_bytes_per_token(shape, "fp16") * 200
    assert floor < predicted < floor * 1.5
    assert check.verdict(100.0, 100.0) == (1.0, True)
    assert check.verdict(130.0, 100.0)[1] is False and check.verdict(79.0, 100.0)[1] is False


@pytest.mark.slow
def test_cpu_run_drives_real_forwards_and_the_parity_check(capsys: pytest.CaptureFixture[str]) -> None:
    check = _load()
    assert check.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "tiny-llama" in out and "n/a" in out  # no CUDA counters on CPU
    assert "bfloat16 parity vs fp32" in out and "next-token agreement" in out
