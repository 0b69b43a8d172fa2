"""`tritonform model upload`: a built repository to the bucket as a new version (see model_repo/upload.py).

The destination is `--to URI`, or `--stack NAME`: the prefix that stack's `pulumi up` exported, which is
where its Triton serves versions from.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

# The stack output infra/program.py exports: the bucket prefix Triton serves versions from.
STACK_OUTPUT_KEYS = ("model_repository_uri",)


def resolve_stack_uri(stack: str, run: Callable[..., Any] = subprocess.run) -> str:
    """The model repository URI that `pulumi up` exported for `stack`; `UploadError` when there is none."""
    from model_repo.upload import UploadError

    if shutil.which("pulumi") is None and run is subprocess.run:
        raise UploadError(
            "the pulumi CLI is not installed, so --stack cannot be resolved; pass --to URI instead"
        )
    done = run(["pulumi", "stack", "output", "--json", "--stack", stack], capture_output=True, text=True)
    if done.returncode != 0:
        raise UploadError(f"`pulumi stack output --stack {stack}` failed: {done.stderr.strip()}")
    outputs = json.loads(done.stdout or "{}")
    for key in STACK_OUTPUT_KEYS:
        if isinstance(outputs.get(key), str):
            return str(outputs[key])
    raise UploadError(f"stack {stack} has no output {' or '.join(STACK_OUTPUT_KEYS)}; run `pulumi up` first")


def register_upload(model_app: Any) -> None:
    """Add `upload` to the `tritonform model` typer sub-app."""

    @model_app.command("upload")
    def upload(
        repository: Annotated[Path, typer.Argument(help="A repository written by `tritonform build`.")],
        to: Annotated[str | None, typer.Option("--to", help="s3://, gs:// or as:// prefix.")] = None,
        stack: Annotated[str | None, typer.Option("--stack", help="Upload to this stack's bucket.")] = None,
    ) -> None:
        """Upload a built repository as a new version; the version that serves changes only at the end."""
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        from model_repo.manifest import read_manifest
        from model_repo.upload import upload_repository

        console = Console(stderr=True)
        if (to is None) == (stack is None):
            console.print("[red]Give exactly one of --to URI or --stack NAME.[/red]")
            raise typer.Exit(2)
        try:
            destination = to if to is not None else resolve_stack_uri(str(stack))
            size = sum(int(f["size"]) for f in read_manifest(repository)["files"].values())
            with Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console
            ) as bar:
                task = bar.add_task(f"uploading to {destination}", total=size)
                result = upload_repository(
                    repository, destination, progress=lambda _name, n: bar.advance(task, n)
                )
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted; CURRENT was not changed.[/yellow]")
            raise typer.Exit(130) from None
        except Exception as exc:  # SDK errors (credentials, missing bucket) are user-facing too
            console.print(f"[red]Upload failed ({type(exc).__name__}):[/red] {exc}")
            console.print("CURRENT was not changed; the previous version still serves.")
            raise typer.Exit(1) from None
        if result.already_current:
            console.print(f"Already current: version {result.version} ({result.repository_uri})")
        else:
            console.print(f"Uploaded version {result.version}: {result.uploaded_files} files")
        typer.echo(result.repository_uri)
