"""The build pipeline: repository + build_report.json, gates enforced, atomic replacement."""

from __future__ import annotations

import dataclasses
import json
import shutil
import weakref
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
    from model_repo.runtime.contract import GenerationMetadata

    def fake_graph(checkpoint: Path, out_dir: Path, *_a: Any, **_kw: Any) -> export.RawExport:
        meta = GenerationMetadata.load(tiny_llama_export)
        return export.RawExport(Path(out_dir), Path(out_dir) / "raw", meta, 0.0, "llama")

    def fake_finish(raw: export.RawExport, **_kw: Any) -> export.ExportResult:
        shutil.copytree(tiny_llama_export, raw.out, dirs_exist_ok=True)
        return export.ExportResult(raw.out, raw.metadata, 0.0, 0.0, {})

    monkeypatch.setattr(export, "export_graph", fake_graph)
    monkeypatch.setattr(export, "finish_export", fake_finish)


def test_int8_build_writes_repository_and_report(
    tiny_llama_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """...and frees each large object before the next one loads: the torch model is gone when the
    exported graph is fused (and later sessions load), the fp32 session when the quantiser starts."""
    from model_repo import quantize
    from model_repo.runtime.engine import Engine

    alive: dict[str, list[weakref.ref[Any]]] = {"torch": [], "engine": []}
    checked: list[str] = []
    load_torch, finish, quantize_model, load_engine = (
        export.load_torch_model,
        export.finish_export,
        quantize.quantize_model,
        Engine.load.__func__,  # type: ignore[attr-defined]
    )

    def tracked_torch(*a: Any, **kw: Any) -> Any:
        model, tok = load_torch(*a, **kw)
        alive["torch"].append(weakref.ref(model))
        return model, tok

    def tracked_engine(cls: type, *a: Any, **kw: Any) -> Any:
        engine = load_engine(cls, *a, **kw)
        alive["engine"].append(weakref.ref(engine))
        return engine

    def live(kind: str) -> int:
        return sum(ref() is not None for ref in alive[kind])

    def checked_finish(*a: Any, **kw: Any) -> Any:
        checked.append(f"torch models alive at the fusions: {live('torch')}")
        return finish(*a, **kw)

    def checked_quantize(*a: Any, **kw: Any) -> Any:
        checked.append(f"sessions alive at quantisation: {live('engine')}")
        return quantize_model(*a, **kw)

    monkeypatch.setattr(export, "load_torch_model", tracked_torch)
    monkeypatch.setattr(export, "finish_export", checked_finish)
    monkeypatch.setattr(quantize, "quantize_model", checked_quantize)
    monkeypatch.setattr(Engine, "load", classmethod(tracked_engine))
    out = tmp_path / "repo"
    seen: list[str] = []
    options = BuildOptions(
        model=str(tiny_llama_checkpoint), out=out, quantize="int8", min_agreement=0.5, max_ppl_increase=0.5
    )
    report = build(options, on_step=lambda name, _done: seen.append(name))
    assert checked == ["torch models alive at the fusions: 0", "sessions alive at quantisation: 0"]
    assert report["memory"]["parameters"] > 0 and report["memory"]["at_least"]  # stated before the work
    assert len(alive["torch"]) == 1 and len(alive["engine"]) == 2  # the fp32 export's, the int8 one's
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

    monkeypatch.setattr(export, "export_graph", interrupted)
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
        ({"dtype": "bfloat16"}, r"--dtype bfloat16: onnxruntime's CPU provider.* has no bf16 kernel"),
        ({"dtype": "int8"}, r"--dtype 'int8': choose one of float32, float16"),
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


def test_an_int4_build_gates_the_graph_serve_runs_on_the_cpu_too(
    tiny_llama_checkpoint: Path, tmp_path: Path, cpu_ops_library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int4: the quality gate runs on onnxruntime's kernels and again with tritonform's CPU operators in
    place of the 4-bit projections (what `tritonform serve` runs), as its own step and report entry;
    TRITONFORM_CPU_OPS=off skips the second one and says so."""
    from model_repo.build import CPU_OPS_QUALITY
    from model_repo.runtime.q4_fusion import CPU_OPS_ENV, VECTOR_KERNELS, library_kernel

    monkeypatch.delenv(CPU_OPS_ENV, raising=False)
    seen: list[str] = []
    options = BuildOptions(
        model=str(tiny_llama_checkpoint),
        out=tmp_path / "repo",
        quantize="int4",
        min_agreement=0.3,  # a random tiny model at 4 bits: ~47% (the gate's figures, not its verdict)
        max_ppl_increase=0.5,
    )
    report = build(options, on_step=lambda name, _done: seen.append(name))
    assert CPU_OPS_QUALITY in step_names(options) and set(seen) == set(step_names(options))
    fused = report["quality_cpu_ops"]
    if library_kernel(cpu_ops_library) in VECTOR_KERNELS:
        assert fused["passed"] and fused["state"].startswith("on (8 projections in Q4OffsetMatMul")
        assert fused["tokens"] == report["quality"]["tokens"]
    else:
        assert fused["state"].startswith("not checked: off (no AVX-512 VNNI or AVX2")
    assert _report(tmp_path / "repo")["quality_cpu_ops"] == fused

    monkeypatch.setenv(CPU_OPS_ENV, "off")
    report = build(dataclasses.replace(options, out=tmp_path / "repo-off"))
    assert report["quality_cpu_ops"] == {"state": f"not checked: ${CPU_OPS_ENV}=off"}
