"""`tritonform init`: a new stack file with the user's own values, that plans clean."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Literal, cast

import typer

from tritonform.commands.infra import console, err_console, project_root, today

Cloud = Literal["aws", "gcp", "azure"]
_MY_ADDRESS = "your public address as a /32, e.g. from `curl -s https://checkip.amazonaws.com`"


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _ask(value: str | None, option: str, question: str) -> str:
    """The value given, else asked for on a terminal; without a terminal a missing value is an error."""
    if value:
        return value
    if sys.stdin.isatty():
        return str(typer.prompt(question))
    raise _fail(f"{option} is required: {question}")


def _resource_prefix(stack: str) -> str:
    """A default `tritonform:name` from the stack name: a DNS label of at most 20 characters."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", stack.lower()).strip("-")
    cleaned = cleaned if cleaned[:1].isalpha() else f"tf-{cleaned}"
    return cleaned[:20].rstrip("-") or "tritonform"


def init(
    cloud: Annotated[str, typer.Option("--cloud", help="aws | gcp | azure.")],
    stack: Annotated[
        str, typer.Option("--stack", "-s", help="The new stack's name (stacks/Pulumi.<stack>.yaml).")
    ],
    environment: Annotated[
        str, typer.Option("--environment", "-e", help="dev (small, spot, public API) | prod (private API).")
    ] = "dev",
    name: Annotated[
        str | None,
        typer.Option("--name", help="Prefix of every cloud resource name (default: from the stack name)."),
    ] = None,
    region: Annotated[str | None, typer.Option("--region", help="Region (default: the example's).")] = None,
    api_access: Annotated[
        str | None,
        typer.Option(
            "--api-access", help="public | private Kubernetes API (default: dev public, prod private)."
        ),
    ] = None,
    admin_cidrs: Annotated[
        list[str] | None,
        typer.Option(
            "--admin-cidr", help="Who may reach a public Kubernetes API: the machine running `pulumi up`."
        ),
    ] = None,
    client_cidrs: Annotated[
        list[str] | None,
        typer.Option("--client-cidr", help="Who may call the endpoint (default: the --admin-cidr values)."),
    ] = None,
    gcp_project: Annotated[str | None, typer.Option("--gcp-project", help="GCP: your project id.")] = None,
    gcp_zone: Annotated[
        str | None, typer.Option("--gcp-zone", help="GCP dev (zonal cluster): the zone, in --region.")
    ] = None,
    azure_admin_groups: Annotated[
        list[str] | None,
        typer.Option("--azure-admin-group", help="Azure: object id of an Entra ID group of cluster admins."),
    ] = None,
    apim_email: Annotated[
        str | None, typer.Option("--apim-email", help="Azure: API Management's notification e-mail.")
    ] = None,
    kms_key: Annotated[
        str | None, typer.Option("--kms-key", help="A customer-managed key for the model bucket (optional).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing stack file.")] = False,
) -> None:
    """Write stacks/Pulumi.<stack>.yaml from the cloud's example, with your values instead of the
    example's documentation addresses and placeholder ids, then check it like `plan` does.

    Values not given as options are asked for on a terminal. Afterwards: `tritonform plan --stack NAME`,
    then `pulumi stack init NAME` and `pulumi up` (README: "Deploying for real").
    """
    from infra.settings import SettingsError
    from infra.settings.new_stack import StackAnswers, example_stack_file, write_stack_file

    if cloud not in ("aws", "gcp", "azure"):
        raise _fail(f"--cloud {cloud!r}: choose aws, gcp or azure")
    if environment not in ("dev", "prod"):
        raise _fail(f"--environment {environment!r}: choose dev or prod")
    access = api_access or ("public" if environment == "dev" else "private")
    if access not in ("public", "private"):
        raise _fail(f"--api-access {access!r}: choose public or private")
    admins = tuple(admin_cidrs or ())
    if access == "public" and not admins:
        admins = (_ask(None, "--admin-cidr", f"Who may reach the Kubernetes API ({_MY_ADDRESS})?"),)
    clients = tuple(client_cidrs or ()) or admins
    if not clients:
        clients = (_ask(None, "--client-cidr", "Which network may call the endpoint (a CIDR)?"),)
    project = _ask(gcp_project, "--gcp-project", "Your GCP project id?") if cloud == "gcp" else None
    answers = StackAnswers(
        cloud=cast(Cloud, cloud),
        environment=cast(Literal["dev", "prod"], environment),
        name=name or _resource_prefix(stack),
        api_access=cast(Literal["public", "private"], access),
        admin_cidrs=admins,
        client_cidrs=clients,
        region=region,
        gcp_project=project,
        gcp_zone=gcp_zone,
        azure_admin_groups=tuple(azure_admin_groups or ()),
        apim_publisher_email=apim_email,
        kms_key=kms_key,
    )
    stacks_dir = project_root() / "stacks"
    target = stacks_dir / f"Pulumi.{stack}.yaml"
    try:
        written = write_stack_file(
            target,
            example_stack_file(stacks_dir, answers.cloud, environment),
            answers,
            today(),
            overwrite=force,
        )
    except SettingsError as exc:
        raise _fail(f"nothing written. {exc}") from None
    console.print(f"[green]wrote[/] {_relative(written.path)}", highlight=False)
    for warning in written.readiness.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if access == "private":
        console.print(
            "The Kubernetes API is private: run `pulumi up` from a machine inside the stack's network "
            "(a runner or bastion), or use --api-access public with --admin-cidr.",
            soft_wrap=True,
        )
    console.print(
        f"Next: tritonform plan --stack {stack}; pulumi stack init {stack}; "
        f"pulumi up --stack {stack} --policy-pack infra/policies/pack",
        highlight=False,
        soft_wrap=True,
    )


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def register(app: typer.Typer) -> None:
    """Add `tritonform init` to the main app."""
    app.command("init")(init)
