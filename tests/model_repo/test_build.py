"""The build pipeline: repository + build_report.json, gates enforced, atomic replacement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from model_repo import export
from model_repo.build import BuildError, BuildOptions, build, step_names
from model_repo.gates import GateError


def _report(repo: Path) -> dict[str, Any]:
    return json.loads((repo / "llm" / "1" / "engine" / "build_report.json").read_text())


@pytest.fixture
def reuse_export(monkeypatch: pytest.MonkeyPatch, tiny_llama_export: Path) -> None:
    """Builds below reuse the session's tiny export instead of exporting again (export has its own tests)."""

    def fake_export(checkpoint: Path, out_dir: Path, **_kw: Any) -> export.ExportResult:
        shutil.copytree(tiny_llama_export, out_dir)
        from model_repo.runtime.contract import GenerationMetadata

        return export.ExportResult(Path(out_dir), GenerationMetadata.load(out_dir), 0.0, 0.0, {})

    monkeypatch.setattr(export, "export_onnx", fake_export)


def test_int8_build_writes_repository_and_report(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    seen: list[str] = []
    options = BuildOptions(
        model=str(tiny_llama_checkpoint), out=out, quantize="int8", min_agreement=0.5, max_ppl_increase=0.5
    )
    report = build(options, on_step=lambda name, _done: seen.append(name))
    assert set(seen) == set(step_names(options))
    assert (out / "REPOSITORY.json").is_file() and (out / "llm" / "config.pbtxt").is_file()
    engine_dir = out / "llm" / "1" / "engine"
    assert {"model.onnx", "tokenizer.json", "generation.json", "build_report.json"} <= {
        p.name for p in engine_dir.iterdir()
    }
    written = _report(out)
    assert written["checkpoint"]["sha256"] == report["checkpoint"]["sha256"]
    assert written["parity"]["passed"] and written["parity"]["n_tokens"] == 64
    assert written["quantization"]["method"] == "int8" and written["quality"]["passed"]
    assert {"export", "parity", "quantize", "quality"} <= set(written["timings_s"])
    # the export step's own facts, recorded as it returned them
    assert (written["export"]["exporter"], written["export"]["opset"]) == (export.EXPORTER, export.OPSET)
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no temp dirs left behind


@pytest.mark.usefixtures("reuse_export")
def test_failed_gate_keeps_the_previous_repository(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    build(BuildOptions(model=str(tiny_llama_checkpoint), out=out))
    before = (out / "REPOSITORY.json").read_text()
    with pytest.raises(GateError, match="quality gate"):
        build(BuildOptions(model=str(tiny_llama_checkpoint), out=out, quantize="int8", min_agreement=1.0))
    assert (out / "REPOSITORY.json").read_text() == before
    assert _report(out)["quantization"]["method"] == "none"
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]


def test_interrupted_build_keeps_the_previous_repository(
    tiny_llama_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "repo"
    out.mkdir()
    (out / "REPOSITORY.json").write_text("{}")

    def interrupted(*_a: Any, **_kw: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(BuildOptions(model=str(tiny_llama_checkpoint), out=out))
    assert (out / "REPOSITORY.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantize": "fp8"}, "--quantize"),
        ({"backend": "vllm"}, "--backend"),
        ({"min_agreement": 1.5}, "--min-agreement"),
        ({"max_ppl_increase": -0.1}, "--max-ppl-increase"),
        ({"dtype": "bfloat16"}, r"--dtype 'bfloat16': choose one of float32, float16"),
        (
            {"dtype": "float16", "quantize": "int4"},
            "--dtype float16 is for --backend onnx without --quantize",
        ),
        ({"dtype": "float16", "backend": "tensorrt-llm"}, "serves the checkpoint at its own precision"),
    ],
)
def test_bad_options_are_rejected_before_work(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(BuildError, match=message):
        build(BuildOptions(model="unused", out=tmp_path / "repo", **kwargs))


def test_tensorrt_llm_backend_writes_the_llmapi_repository(
    tiny_llama_checkpoint: Path, tmp_path: Path
) -> None:
    """`build --backend tensorrt-llm` writes the checkpoint, its model.yaml and the tokenizer the gateway
    reads, with no engine build step; quantising is the ONNX backend's and is refused before any work."""
    from model_repo.manifest import engine_dir, read_manifest

    out = tmp_path / "trt"
    with pytest.raises(BuildError, match="--quantize int8 is for --backend onnx"):
        build(
            BuildOptions(model=str(tiny_llama_checkpoint), out=out, backend="tensorrt-llm", quantize="int8")
        )
    options = BuildOptions(
        model=str(tiny_llama_checkpoint), out=out, backend="tensorrt-llm", tensor_parallel=2
    )
    report = build(options)
    assert sorted(p.name for p in out.iterdir()) == ["REPOSITORY.json", "llm"]
    assert (engine_dir(out, "llm") / "tokenizer.json").is_file()
    assert (engine_dir(out, "llm") / "config.json").is_file()
    assert read_manifest(out)["llmapi"]["tensor_parallel_size"] == 2
    assert report["tensorrt_llm"]["protocol"] == "llmapi"


def test_default_build_removes_older_builds_of_the_same_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kit upgrade that changes the model code builds the default repository afresh; the build it
    replaces (same checkpoint and quantisation, another code digest) is removed, nothing else is."""
    import model_repo.build as build_module
    import model_repo.checkpoint as checkpoint_module
    from model_repo.manifest import MANIFEST_FILE

    checkpoint = tmp_path / "checkpoints" / "smol-abc"
    monkeypatch.setattr(checkpoint_module, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(checkpoint_module, "fetch_default", lambda _say=None: checkpoint)

    def fake_build(options: BuildOptions, *_args: Any) -> None:
        options.out.mkdir(parents=True)
        (options.out / MANIFEST_FILE).write_text("{}")

    monkeypatch.setattr(build_module, "build", fake_build)
    quant = build_module.DEFAULT_QUANTIZE
    other_quant = "int8" if quant != "int8" else "int4"
    repositories = tmp_path / "repositories"
    older = repositories / f"smol-abc-{quant}-0123456789abcdef"
    kept = [
        repositories / f"smol-abc-{other_quant}-0123456789abcdef",  # another quantisation
        repositories / f"other-model-{quant}-0123456789abcdef",  # another model
        repositories / f".smol-abc-{quant}-fedcba9876543210.partial-x",  # a build in progress
        repositories / f"smol-abc-{quant}-mine",  # not a digest: not ours to judge
    ]
    for folder in (older, *kept):
        folder.mkdir(parents=True)
    said: list[str] = []
    target = build_module.build_default_repository(said.append)
    assert (target / MANIFEST_FILE).is_file() and target.name.startswith(f"smol-abc-{quant}-")
    assert not older.exists() and all(folder.exists() for folder in kept)
    assert any("removed an older build" in line and str(older) in line for line in said)
    # a second call finds the cached build and removes nothing
    assert build_module.build_default_repository(said.append) == target
    assert all(folder.exists() for folder in kept)
