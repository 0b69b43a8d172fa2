"""`tritonform serve`: a real local Triton plus the OpenAI-compatible gateway, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


DEMO_MODEL_NOTE = (
    "The default model is SmolLM2-135M-Instruct, a 135M-parameter demonstration model: it shows the stack "
    "working, but its answers are often wrong (asked for the capital of France it may answer with a French "
    "phrase; llama.cpp answers the same on the same weights). Serve your own checkpoint instead:\n"
    "  tritonform build --model /path/to/hf-checkpoint --out build/mine\n"
    "  tritonform serve --model-repo build/mine"
)


def usage_examples(url: str, api_key: str, model: str) -> str:
    """The ready-to-paste `curl` and `openai` snippets printed once the stack is up."""
    return f"""curl {url}/v1/chat/completions \\
  -H "Authorization: Bearer {api_key}" -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 64}}'

python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="{api_key}")
for chunk in client.chat.completions.create(
    model="{model}", messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=64, stream=True
):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
PY"""


def serve(
    model_repo: Annotated[
        Path | None,
        typer.Option(
            "--model-repo", help="Triton model repository (default: build the default model, cached)."
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address the gateway listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Gateway port.", min=1, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="TRITONFORM_LOCAL_API_KEY", help="Key to accept (default: new)."),
    ] = None,
    idle_stop: Annotated[
        float | None,
        typer.Option(
            "--idle-stop",
            metavar="SECONDS",
            min=1,
            help="Stop Triton after this many seconds without requests and start it again when one "
            "arrives (the gateway holds it meanwhile), like Triton scaling to zero on a cluster.",
        ),
    ] = None,
    triton_replicas: Annotated[
        int,
        typer.Option(
            "--triton-replicas",
            min=1,
            max=8,
            help="Triton processes to run; with 2 or more the gateway sends each request to the one most "
            "likely to hold its prompt's prefix in cache (multi-turn chats return to the same one).",
        ),
    ] = 1,
    canary: Annotated[
        Path | None,
        typer.Option(
            "--canary",
            metavar="DIR",
            help="Try a second built repository (the new version) as a canary: it runs in its own Triton "
            "beside the stable one, takes --canary-weight percent of conversations (each conversation stays "
            "on one version) and is rolled back automatically when its errors or TTFT exceed the stable "
            "version's; `tritonform model status --url URL` shows both versions' figures.",
        ),
    ] = None,
    canary_weight: Annotated[
        float,
        typer.Option(
            "--canary-weight", metavar="PERCENT", min=1, max=100, help="Conversations to the canary."
        ),
    ] = 10.0,
    canary_fail_every: Annotated[
        int | None,
        typer.Option(
            "--canary-fail-every",
            metavar="N",
            min=1,
            help="Rehearsal: serve a copy of --canary that fails every N-th request, to watch the rollback.",
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="For scripts: no progress display or examples; print only the URL and key."
        ),
    ] = False,
) -> None:
    """Serve a model locally: real Triton + OpenAI-compatible gateway. Ctrl-C stops both.

    Without --model-repo it serves the default demonstration model (SmolLM2-135M-Instruct), building its
    repository on the first run (about 5-6 minutes on 2 CPU cores, each step shown; library warnings go
    to the build log) and reusing it afterwards.
    """
    from serving.local_stack import LocalStack, LocalStackConfig, StackError, check_port_free

    # Ctrl-C and `kill` stop alike, however serve was started: a background job of a non-interactive
    # shell starts with SIGINT ignored, and Python would keep ignoring it.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, _interrupt)
    default_model = model_repo is None
    try:
        check_port_free(host, port)  # before a possibly long build
        if model_repo is None:
            # building is the CLI's part: the local stack only serves a repository it is given
            model_repo = _build_default(quiet)
        elif not model_repo.is_dir():
            raise _fail(f"model repository {model_repo} does not exist; build one with `tritonform build`")
        if canary is not None and not canary.is_dir():
            raise _fail(f"--canary {canary} does not exist; build the new version with `tritonform build`")
        if canary_fail_every is not None and canary is None:
            raise _fail("--canary-fail-every needs --canary DIR (the version to break on purpose)")
        _prepare_cpu_ops(quiet)  # after every check of the arguments: it may download and compile
        stack = LocalStack(
            LocalStackConfig(
                model_repository=model_repo,
                host=host,
                port=port,
                api_key=api_key,
                idle_stop_s=idle_stop,
                triton_replicas=triton_replicas,
                canary_repository=canary,
                canary_weight=canary_weight,
                canary_fail_every=canary_fail_every,
            )
        )
        if quiet:
            stack.start()
        else:
            with console.status("starting Triton and the gateway"):
                stack.start()
    except StackError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(code=130) from None
    try:
        console.print(
            f"[bold green]ready[/] {stack.url}  (model [bold]{stack.model_name}[/], repository {model_repo})",
            soft_wrap=True,
        )
        console.print(f"API key: {stack.api_key}", soft_wrap=True, highlight=False)
        if not quiet:
            examples = usage_examples(stack.url, stack.api_key, stack.model_name)
            console.print(examples, highlight=False, markup=False, soft_wrap=True)
            if default_model:
                console.print(DEMO_MODEL_NOTE, highlight=False, markup=False, soft_wrap=True)
            if idle_stop is not None:
                console.print(
                    f"Triton stops after {idle_stop:g} s idle and starts again on the next request "
                    "(held by the gateway meanwhile)."
                )
            if canary is not None:
                console.print(
                    f"Canary {canary} takes {canary_weight:g}% of conversations; its figures and the rollback"
                    f" decision: tritonform model status --url {stack.url}",
                    soft_wrap=True,
                )
            console.print("Press Ctrl-C to stop.")
        threading.Event().wait()  # until Ctrl-C
    except KeyboardInterrupt:
        console.print(f"stopping (at most {stack.stop_timeout_s:.0f} s)")
    finally:
        # A second Ctrl-C must not cut the stop short; if serve is killed instead, Triton's supervisor
        # still stops it (serving/supervised.py).
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, signal.SIG_IGN)
        stack.stop()
        console.print("stopped")


def _build_default(quiet: bool) -> Path:
    """The default model's repository (cached), its build shown step by step (tritonform/commands/
    build_progress.py); library warnings go to the build log."""
    # building is the CLI's part: the local stack only serves a repository it is given
    from model_repo.build import build_default_repository
    from model_repo.checkpoint import cache_dir
    from tritonform.commands.build_progress import FIRST_RUN_NOTE, BuildProgress

    log_file = cache_dir() / "logs" / "build-default.log"
    with BuildProgress(console, log_file, quiet) as progress:

        def say(message: str) -> None:
            if message.startswith("building the default model"):
                message = f"building the default model's repository ({FIRST_RUN_NOTE}); log: {log_file}"
            progress(message)

        return build_default_repository(say)


def _prepare_cpu_ops(quiet: bool) -> None:
    """Build tritonform's CPU operator library (cached; model_repo/cpu_ops.py) and hand its path to the
    model through $TRITONFORM_CPU_OPS, which Triton's processes inherit. A path or "off" already in the
    environment is the user's choice and kept. A failed build says why and serves with onnxruntime's own
    kernels: slower on the CPU, the same answers."""
    from model_repo.cpu_ops import CpuOpsError, build_library
    from model_repo.runtime.q4_fusion import CPU_OPS_ENV

    if os.environ.get(CPU_OPS_ENV):
        return
    try:
        if quiet:
            library = build_library()
        else:
            with console.status("preparing tritonform's CPU operators") as shown:
                library = build_library(lambda message: shown.update(message))
    except CpuOpsError as exc:
        err_console.print(f"warning: {exc}\nServing with onnxruntime's own kernels.", markup=False)
        return
    os.environ[CPU_OPS_ENV] = str(library)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    """Add `tritonform serve` to the main app."""
    app.command("serve")(serve)
