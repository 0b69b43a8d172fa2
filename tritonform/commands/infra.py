"""Infrastructure commands: `tritonform plan` runs the real Pulumi program offline under mocks."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

if TYPE_CHECKING:
    from infra.offline import Plan

console = Console()
err_console = Console(stderr=True)


class StackNotFoundError(ValueError):
    """No stack file for the requested stack name."""


def project_root(start: Path | None = None) -> Path:
    """The folder holding Pulumi.yaml: the working directory or a parent, else the installed source tree."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file() and (folder / "stacks").is_dir():
            return folder
    return Path(__file__).resolve().parents[2]


def stack_file(stack: str, root: Path | None = None) -> Path:
    """`stacks/Pulumi.<stack>.yaml`; the error lists the stacks that exist."""
    stacks_dir = project_root(root) / "stacks"
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = sorted(
            p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in stacks_dir.glob("Pulumi.*.yaml")
        )
        raise StackNotFoundError(
            f"no stack {stack!r}: {path} does not exist. Known stacks: {', '.join(known) or 'none'}"
        )
    return path


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def resolve_stack(stack: str | None, stack_path: Path | None) -> Path:
    """The stack file named by `--stack` or `--stack-file` (exactly one of them)."""
    if (stack is None) == (stack_path is None):
        raise _fail("give exactly one of --stack NAME or --stack-file PATH")
    if stack_path is not None:
        if not stack_path.is_file():
            raise _fail(f"stack file {stack_path} does not exist")
        return stack_path
    assert stack is not None
    try:
        return stack_file(stack)
    except StackNotFoundError as exc:
        raise _fail(str(exc)) from None


def run_plan(path: Path) -> Plan:
    """Plan a stack file, turning every user-facing failure into a clean exit."""
    from infra.offline import UnmockedInvokeError, plan_stack
    from infra.settings import SettingsError

    try:
        return plan_stack(path)
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    except UnmockedInvokeError as exc:
        raise _fail(str(exc)) from None


def today() -> date:
    """The date readiness is checked for (Kubernetes support windows); a function so tests can fix it."""
    return date.today()


def render_tree(plan: Plan) -> Tree:
    """Resources as a tree: components with their children, each with a short summary."""
    label = f"[bold]{plan.stack}[/] ({plan.cloud}, {plan.settings.region}) — {len(plan.resources)} resources"
    tree = Tree(label)
    children: dict[str | None, list[Any]] = {}
    for res in plan.resources:
        children.setdefault(res.parent, []).append(res)

    def add(node: Tree, parent: str | None) -> None:
        for res in sorted(children.get(parent, []), key=lambda r: (r.type, r.name)):
            key = f"{res.type}::{res.name}"
            branch = node.add(
                f"[cyan]{res.type}[/] [bold]{escape(res.name)}[/]{_summary(res.type, res.inputs)}"
            )
            add(branch, key)

    add(tree, None)
    outputs = tree.add("[magenta]outputs[/]")
    for key, value in plan.outputs.items():
        outputs.add(escape(f"{key} = {json.dumps(value)}"))
    return tree


_SUMMARY_KEYS = (
    "version",
    "instanceTypes",
    "capacityType",
    "scalingConfig",
    "taints",
    "cidrBlock",
    "sseAlgorithm",
    "blockPublicAcls",
    "status",
)


def _summary(type_token: str, inputs: dict[str, Any]) -> str:
    parts = [f"{k}={json.dumps(inputs[k])}" for k in _SUMMARY_KEYS if k in inputs]
    return f" [dim]{escape(' '.join(parts))}[/]" if parts else ""


def plan(
    stack: Annotated[
        str | None,
        typer.Option("--stack", "-s", help="Stack name, e.g. aws-dev (reads stacks/Pulumi.<stack>.yaml)."),
    ] = None,
    stack_path: Annotated[
        Path | None, typer.Option("--stack-file", help="Plan this stack file instead of a named stack.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON for machines.")] = False,
) -> None:
    """Show what `pulumi up` would create for a stack, offline: no Pulumi CLI, no credentials.

    Runs the real Pulumi program (infra/__main__.py) under Pulumi's mocks, prints every resource with
    its inputs as the program passes them (secrets print as \\[secret]), then checks the policy pack's
    rules offline, the model's fit on its GPUs and the stack's estimated cost (USD per hour at the GPU
    pool's min, desired and max nodes from list prices, and USD per million output tokens at full load
    from a memory-bandwidth throughput model), and whether the stack is ready for `pulumi up` (no example
    values such as documentation address ranges or placeholder ids left, a Kubernetes version its cloud
    still creates). Exits 1 when a mandatory policy is violated, 2 on a bad stack or settings (a model
    that does not fit its GPUs among them) or a stack that is not ready yet.
    """
    from infra.cost import stack_cost
    from infra.policies.offline import evaluate, mandatory_violations
    from infra.settings.readiness import check_readiness
    from tritonform.commands.cost_view import cost_lines, cost_table

    path = resolve_stack(stack, stack_path)
    result = run_plan(path)
    cost = stack_cost(result.settings)
    policies = evaluate(result)
    readiness = check_readiness(result.settings, today())
    if as_json:
        doc = {
            **result.as_dict(),
            "policies": [p.as_dict() for p in policies],
            "readiness": {
                "ready": readiness.ready,
                "blockers": list(readiness.blockers),
                "warnings": list(readiness.warnings),
            },
            "cost": cost.as_dict(),
        }
        typer.echo(json.dumps(doc, indent=2, sort_keys=False))
    else:
        console.print(render_tree(result))
        console.print(cost_table(cost))
        for line in cost_lines(cost):
            console.print(line, soft_wrap=True, highlight=False)
        for p in policies:
            colour = "red" if p.level == "mandatory" else "yellow"
            console.print(f"[{colour}]{p.level}[/] {p.rule} {escape(p.resource)}: {escape(p.message)}")
        if not policies:
            console.print("[green]policies: no violations[/]")
        for warning in readiness.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    mandatory = mandatory_violations(policies)
    if mandatory:
        err_console.print(
            f"[bold red]error:[/] {len(mandatory)} mandatory policy violation(s); "
            "fix the stack before deploying"
        )
        raise typer.Exit(code=1)
    if readiness.blockers:
        lines = "\n".join(f"  - {escape(blocker)}" for blocker in readiness.blockers)
        err_console.print(
            f"[bold red]error:[/] stack {result.stack} is not ready for `pulumi up` (it refuses to run):\n"
            f"{lines}\nSet these keys, or write a stack with your values: tritonform init --help",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(code=2)


def render(
    stack: Annotated[str | None, typer.Option("--stack", "-s", help="Stack name, e.g. aws-dev.")] = None,
    stack_path: Annotated[
        Path | None, typer.Option("--stack-file", help="Render this stack file instead of a named stack.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the YAML files to.")] = Path(
        "rendered"
    ),
) -> None:
    """Write every Kubernetes object the stack would apply as YAML, validated strictly.

    Runs the program offline (like `plan`), turns each Kubernetes resource into a manifest, and
    validates it against the schemas of the stack's Kubernetes version (kubernetes-validate, strict:
    unknown fields and wrong types fail). An invalid object stops the command, naming the object and
    the field, and nothing is written. Helm releases are listed in helm-releases.yaml.
    """
    from infra.offline.render import ManifestError
    from infra.offline.render import render as render_manifests

    path = resolve_stack(stack, stack_path)
    result = run_plan(path)
    try:
        rendered = render_manifests(result, out)
    except ManifestError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"wrote {len(rendered.files)} manifests to {out} "
        f"(Kubernetes {result.settings.cluster.kubernetes_version}, strict schemas) "
        f"and {len(rendered.helm_releases)} Helm releases to {out / 'helm-releases.yaml'}",
        highlight=False,
    )
    for name in rendered.unchecked:
        console.print(f"[yellow]not schema-checked (custom resource):[/] {name}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the infrastructure commands to the main app."""
    app.command("plan")(plan)
    app.command("render")(render)
