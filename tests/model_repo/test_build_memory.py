"""The build states the RAM it needs before it starts: parameters counted from the checkpoint's headers,
the measured fit per billion parameters, the machine's memory, and what to do when it is short."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_repo import build_memory


def test_parameters_are_counted_from_the_headers(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    from model_repo.export import load_torch_model

    model, _tok = load_torch_model(tiny_llama_checkpoint)
    assert build_memory.parameter_count(tiny_llama_checkpoint) == sum(p.numel() for p in model.parameters())
    assert build_memory.parameter_count(tmp_path) == 0
    assert build_memory.estimate(tmp_path, "float32", "none") is None


def test_an_8b_fp32_build_on_a_small_machine_is_told_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, tiny_llama_checkpoint: Path
) -> None:
    monkeypatch.setattr(build_memory, "parameter_count", lambda _path: 8_000_000_000)
    monkeypatch.setattr(build_memory, "machine_memory_gib", lambda: 24.0)
    libraries, per_billion = build_memory.BUILD_MEMORY_FIT["float32"]
    entry = build_memory.estimate(tiny_llama_checkpoint, "float32", "none")
    assert entry is not None and entry["estimated_peak_gib"] == round(libraries + 8 * per_billion, 2)
    assert not entry["enough"] and entry["machine_gib"] == 24.0
    line = build_memory.describe(entry, "float32")
    assert "8.00B parameters at float32" in line and "this machine has 24.0 GiB" in line
    assert "likely too little" in line and "--dtype float16 needs about half" in line
    half = build_memory.estimate(tiny_llama_checkpoint, "float16", "none")
    assert half is not None and half["estimated_peak_gib"] < entry["estimated_peak_gib"]
    quantised = build_memory.estimate(tiny_llama_checkpoint, "float32", "int4")
    assert quantised is not None and "needs at least" in build_memory.describe(quantised, "float32")


def test_a_tiny_build_fits() -> None:
    entry = {
        "parameters": 100_000,
        "estimated_peak_gib": 0.5,
        "gib_per_billion_parameters": 6.0,
        "at_least": False,
        "machine_gib": 23.4,
        "enough": True,
    }
    assert "too little" not in build_memory.describe(entry, "float16")


def test_the_readme_states_the_fit_the_build_uses() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    text = " ".join(readme.split())
    for libraries, per_billion in build_memory.BUILD_MEMORY_FIT.values():
        assert f"{libraries:.1f} GiB + {per_billion:.1f} GiB per billion parameters" in text
