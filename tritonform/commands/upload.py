"""`tritonform model upload`: a built repository to the bucket as a new version (see model_repo/upload.py).

The destination is `--to URI`, or `--stack NAME`: the prefix that stack's `pulumi up` exported. With
`--stack`, a successful upload also pins the stack's serving version (`pulumi config set --path --stack
NAME tritonform:triton.modelVersion <version>`), and the next `pulumi up --stack NAME` rolls Triton and the
gateway to it together; `--no-set-version` leaves the stack as it is. A failed or interrupted upload
changes neither `CURRENT` nor the stack's configuration.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

# The stack output infra/program.py exports: the bucket prefix Triton serves versions from.
STACK_OUTPUT_KEYS = ("model_repository_uri",)
# The stack setting both serving Deployments are pinned to (infra/settings/serving.py, `model_version`).
VERSION_CONFIG_KEY = "tritonform:triton.modelVersion"


class StackConfigError(RuntimeError):
    """The stack's serving version could not be set; the message says which command to run instead."""


def _pulumi_cwd() -> Path:
    """Where the pulumi CLI finds Pulumi.yaml and stacks/, whichever folder the user runs us from."""
    from tritonform.commands.infra import project_root

    return project_root()


def set_version_command(stack: str, version: str) -> list[str]:
    """The pulumi command that pins `stack`'s serving version (`--path`: the key is inside `triton`)."""
    return ["pulumi", "config", "set", "--path", "--stack", stack, VERSION_CONFIG_KEY, version]


def resolve_stack_uri(stack: str, run: Callable[..., Any] = subprocess.run) -> str:
    """The model repository URI that `pulumi up` exported for `stack`; `UploadError` when there is none."""
    from model_repo.upload import UploadError

    if shutil.which("pulumi") is None and run is subprocess.run:
        raise UploadError(
            "the pulumi CLI is not installed, so --stack cannot be resolved; pass --to URI instead"
        )
    done = run(
        ["pulumi", "stack", "output", "--json", "--stack", stack],
        capture_output=True,
        text=True,
        cwd=_pulumi_cwd(),
    )
    if done.returncode != 0:
        raise UploadError(f"`pulumi stack output --stack {stack}` failed: {done.stderr.strip()}")
    outputs = json.loads(done.stdout or "{}")
    for key in STACK_OUTPUT_KEYS:
        if isinstance(outputs.get(key), str):
            return str(outputs[key])
    raise UploadError(f"stack {stack} has no output {' or '.join(STACK_OUTPUT_KEYS)}; run `pulumi up` first")


def set_stack_version(stack: str, version: str, run: Callable[..., Any] = subprocess.run) -> None:
    """Pin `stack`'s serving version to `version`; `StackConfigError` names the command to run instead."""
    command = set_version_command(stack, version)
    later = f"run it yourself: {shlex.join(command)}"
    if shutil.which("pulumi") is None and run is subprocess.run:
        raise StackConfigError(f"the pulumi CLI is not installed, so the stack was not changed; {later}")
    try:
        done = run(command, capture_output=True, text=True, cwd=_pulumi_cwd())
    except FileNotFoundError:
        raise StackConfigError(
            f"the pulumi CLI is not installed, so the stack was not changed; {later}"
        ) from None
    if done.returncode != 0:
        raise StackConfigError(f"`{shlex.join(command)}` failed: {(done.stderr or '').strip()}; {later}")


def register_upload(model_app: Any, run: Callable[..., Any] = subprocess.run) -> None:
    """Add `upload` to the `tritonform model` typer sub-app; `run` runs the pulumi CLI (tests fake it)."""

    @model_app.command("upload")
    def upload(
        repository: Annotated[Path, typer.Argument(help="A repository written by `tritonform build`.")],
        to: Annotated[str | None, typer.Option("--to", help="s3://, gs:// or as:// prefix.")] = None,
        stack: Annotated[str | None, typer.Option("--stack", help="Upload to this stack's bucket.")] = None,
        set_version: Annotated[
            bool,
            typer.Option(
                "--set-version/--no-set-version",
                help="With --stack: pin the stack's serving version (triton.modelVersion) to the upload.",
            ),
        ] = True,
        canary: Annotated[
            int | None,
            typer.Option(
                "--canary",
                metavar="PERCENT",
                min=1,
                max=99,
                help="With --stack: try the upload as a canary beside the stable version (canary.version and "
                "canary.weight) instead of pinning it; the gateways split conversations and roll it back "
                "by themselves on bad figures; end it with `tritonform model promote|rollback`.",
            ),
        ] = None,
    ) -> None:
        """Upload a built repository as a new version; with --stack, pin the stack to it (or, with --canary,
        start it as a canary beside the stable version)."""
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        from model_repo.manifest import read_manifest
        from model_repo.upload import upload_repository

        console = Console(stderr=True)
        if (to is None) == (stack is None):
            console.print("[red]Give exactly one of --to URI or --stack NAME.[/red]")
            raise typer.Exit(2)
        if canary is not None and (stack is None or not set_version):
            console.print(
                "[red]--canary starts a canary on a stack: give --stack NAME (and not --no-set-version)."
            )
            raise typer.Exit(2)
        try:
            destination = to if to is not None else resolve_stack_uri(str(stack), run=run)
            size = sum(int(f["size"]) for f in read_manifest(repository)["files"].values())
            with Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console
            ) as bar:
                task = bar.add_task(f"uploading to {destination}", total=size)
                result = upload_repository(
                    repository, destination, progress=lambda _name, n: bar.advance(task, n)
                )
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted; CURRENT and the stack's serving version were not changed.")
            raise typer.Exit(130) from None
        except Exception as exc:  # SDK errors (credentials, missing bucket) are user-facing too
            console.print(
                f"[red]Upload failed ({type(exc).__name__}):[/red] {escape(str(exc))}",
                highlight=False,
                soft_wrap=True,
            )
            console.print("CURRENT and the stack's serving version were not changed.", soft_wrap=True)
            raise typer.Exit(1) from None
        if result.already_current:
            console.print(f"Already current: version {result.version} ({result.repository_uri})")
        else:
            console.print(f"Uploaded version {result.version}: {result.uploaded_files} files")
        typer.echo(result.repository_uri)
        if canary is not None and stack is not None:
            _start_canary(console, result.version, stack, canary, run)
            return
        _pin_version(console, result.version, stack, set_version, run)


def _start_canary(console: Any, version: str, stack: str, weight: int, run: Callable[..., Any]) -> None:
    """Set the stack's canary to the uploaded version (the stable one stays as it is)."""
    from rich.markup import escape

    from tritonform.commands.rollout import RolloutError, set_canary

    try:
        set_canary(stack, version, weight, run)
    except RolloutError as exc:
        console.print(f"[red]Uploaded version {version}, but the stack's canary was not set:[/red]")
        console.print(escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(
        f"Stack {stack}: version {version} is the canary for {weight}% of conversations. `pulumi up "
        f"--stack {stack}` starts it beside the stable version; `tritonform model status --stack {stack}` "
        "shows both.",
        highlight=False,
        soft_wrap=True,
    )


def _pin_version(
    console: Any, version: str, stack: str | None, set_version: bool, run: Callable[..., Any]
) -> None:
    """With --stack, set its serving version; otherwise say which commands serve the version."""
    from rich.markup import escape

    if stack is None or not set_version:
        name = stack or "STACK"
        command = shlex.join(set_version_command(name, version))
        console.print(
            f"Version {version}. To serve it: {command} && pulumi up --stack {name}",
            highlight=False,
            soft_wrap=True,
        )
        return
    try:
        set_stack_version(stack, version, run=run)
    except StackConfigError as exc:
        console.print(f"[red]Uploaded version {version}, but the stack's serving version was not set:[/red]")
        console.print(escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(
        f"Stack {stack} is pinned to version {version}: `pulumi up --stack {stack}` rolls Triton and the "
        "gateway to it together.",
        highlight=False,
        soft_wrap=True,
    )
