"""`tritonform model promote|rollback|status`: end a canary rollout, or look at one.

A canary starts with `tritonform model upload DIR --stack NAME --canary PERCENT`, which sets the stack's
`canary.version` and `canary.weight`; the next `pulumi up` runs it beside the stable version
(infra/workload/triton.py) and the gateways split traffic and roll it back by themselves on bad figures
(serving/gateway/canary.py). `promote` makes the canary the stable `triton.modelVersion` and removes
`canary.version`; `rollback` removes `canary.version` (after an automatic rollback too: that removes the
canary's Deployment). Both change the stack's configuration through the pulumi CLI; `pulumi up` applies it.
`status` shows both versions' window figures and the rollback decision, from a gateway's `GET /canary`
(`--url`: the local stack, or a gateway reached with `kubectl port-forward`) or, for `--stack`, summed over
every gateway pod from the cluster's Prometheus HTTP API (`--prometheus`, by default a port-forward of
prometheus-server on 127.0.0.1:9090) with the decision ConfigMap read through the Kubernetes API of the
current kubeconfig context. (The edge forwards /v1 only, so neither is reachable from outside.)
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Callable
from typing import Annotated, Any

import typer

CANARY_KEY = "tritonform:canary.version"
WEIGHT_KEY = "tritonform:canary.weight"
STABLE_KEY = "tritonform:triton.modelVersion"
DECISION_CONFIGMAP = "tritonform-canary"  # infra/workload/canary.py
WINDOW_METRICS = {
    "requests": "sum by (role, version) (tritonform_gateway_canary_window_requests)",
    "errors": "sum by (role, version) (tritonform_gateway_canary_window_errors)",
    "ttft_p95_s": "max by (role, version) (tritonform_gateway_canary_window_ttft_p95_seconds)",
}


STACK_OPTION = typer.Option("--stack", help="The stack whose canary to end (its pulumi config changes).")


class RolloutError(RuntimeError):
    """A rollout command could not do its work; the message says what to do."""


def _pulumi(args: list[str], stack: str, run: Callable[..., Any]) -> str:
    """`pulumi config VERB --path --stack STACK KEY [VALUE]` (`args`: VERB KEY [VALUE]); its output."""
    command = ["pulumi", "config", args[0], "--path", "--stack", stack, *args[1:]]
    if shutil.which("pulumi") is None and run is subprocess.run:
        raise RolloutError(f"the pulumi CLI is not installed; run it where it is: {shlex.join(command)}")
    from tritonform.commands.infra import project_root  # where pulumi finds Pulumi.yaml and stacks/

    done = run(command, capture_output=True, text=True, cwd=project_root())
    if done.returncode != 0:
        raise RolloutError(f"`{shlex.join(command)}` failed: {(done.stderr or '').strip()}")
    return str(done.stdout or "").strip()


def current_canary(stack: str, run: Callable[..., Any] = subprocess.run) -> str:
    """The stack's `canary.version`; `RolloutError` when no canary is configured."""
    try:
        version = _pulumi(["get", CANARY_KEY], stack, run)
    except RolloutError as exc:
        if "not found" in str(exc) or "missing" in str(exc):
            version = ""
        else:
            raise
    if not version:
        raise RolloutError(
            f"stack {stack} has no canary (canary.version is not set); start one with "
            f"`tritonform model upload DIR --stack {stack} --canary PERCENT`"
        )
    return version


def set_canary(stack: str, version: str, weight: int, run: Callable[..., Any] = subprocess.run) -> None:
    """Start a canary of `version` taking `weight` percent (the next `pulumi up` runs it)."""
    _pulumi(["set", CANARY_KEY, version], stack, run)
    _pulumi(["set", WEIGHT_KEY, str(weight)], stack, run)


def promote(stack: str, run: Callable[..., Any] = subprocess.run) -> str:
    """The canary becomes the stable version; returns it."""
    version = current_canary(stack, run)
    _pulumi(["set", STABLE_KEY, version], stack, run)
    _pulumi(["rm", CANARY_KEY], stack, run)
    return version


def rollback(stack: str, run: Callable[..., Any] = subprocess.run) -> str:
    """Remove the canary; returns the version removed."""
    version = current_canary(stack, run)
    _pulumi(["rm", CANARY_KEY], stack, run)
    return version


def status_from_url(url: str, get: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """A gateway's `GET /canary` answer."""
    import httpx

    fetch = get or (lambda address: httpx.get(address, timeout=10))
    try:
        response = fetch(url.rstrip("/") + "/canary")
    except httpx.HTTPError as exc:
        raise RolloutError(f"could not reach the gateway at {url}: {exc}") from None
    if response.status_code != 200:
        raise RolloutError(f"{url}/canary answered {response.status_code}; is it a tritonform gateway?")
    answer: dict[str, Any] = response.json()
    if answer.get("canary", True) is None:
        raise RolloutError(f"the gateway at {url} runs no canary")
    return answer


def status_from_cluster(
    namespace: str, prometheus: str, get: Callable[..., Any] | None = None, api: Any = None
) -> dict[str, Any]:
    """The window figures summed over every gateway pod (Prometheus' HTTP API at `prometheus`) and the
    decision ConfigMap (`api`: a CoreV1Api; default: the current kubeconfig context)."""
    import httpx

    fetch = get or (lambda address, params: httpx.get(address, params=params, timeout=10))
    window: dict[str, dict[str, Any]] = {}
    versions: dict[str, str] = {}
    for figure, query in WINDOW_METRICS.items():
        try:
            response = fetch(prometheus.rstrip("/") + "/api/v1/query", {"query": query})
        except httpx.HTTPError as exc:
            raise RolloutError(
                f"could not reach Prometheus at {prometheus} ({exc}); forward it first: "
                "kubectl -n monitoring port-forward svc/prometheus-server 9090:80"
            ) from None
        for series in response.json().get("data", {}).get("result", []):
            role, version = series["metric"].get("role", "?"), series["metric"].get("version", "?")
            versions[role] = version
            window.setdefault(role, {})[figure] = float(series["value"][1])
    if not window:
        raise RolloutError(f"no gateway in {namespace} reports a canary (is one configured and deployed?)")
    if api is None:
        from kubernetes import client, config

        config.load_kube_config()
        api = client.CoreV1Api()
    found = api.read_namespaced_config_map(DECISION_CONFIGMAP, namespace)
    raw_decision = (found.data or {}).get("decision")
    for figures in window.values():
        requests = figures.get("requests", 0.0)
        figures["error_ratio"] = figures.get("errors", 0.0) / requests if requests else 0.0
    return {
        "versions": versions,
        "window": window,
        "decision": json.loads(raw_decision) if raw_decision else None,
    }


def render_status(status: dict[str, Any]) -> Any:
    """A rich table of both versions' figures, with the decision under it."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="canary rollout", title_justify="left")
    for column in ("role", "version", "requests (window)", "errors", "error ratio", "TTFT p95"):
        table.add_column(column, justify="right" if column[0] in "reT" and column != "role" else "left")
    for role in ("stable", "canary"):
        fig = status.get("window", {}).get(role, {})
        p95 = fig.get("ttft_p95_s")
        table.add_row(
            role,
            str(status.get("versions", {}).get(role, "?")),
            f"{fig.get('requests', 0):g}",
            f"{fig.get('errors', 0):g}",
            f"{fig.get('error_ratio', 0.0):.1%}",
            "-" if not p95 else f"{p95 * 1000:.0f} ms",
        )
    decision = status.get("decision")
    weight = status.get("weight_percent")
    lines = (
        []
        if weight is None
        else [f"canary weight now {weight:g}% (configured {status['configured_weight_percent']:g}%)"]
    )
    if decision:
        lines.append(f"rolled back automatically at {decision.get('at', '?')}: {decision.get('reason', '')}")
    else:
        lines.append("no rollback: the canary is within its margins (or not yet judged)")
    return Group(table, Text("\n".join(lines)))


def register_rollout(model_app: Any, run: Callable[..., Any] = subprocess.run) -> None:
    """Add promote, rollback and status to the `tritonform model` sub-app (`run`: the pulumi CLI)."""
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)

    def fail(exc: Exception) -> typer.Exit:
        console.print(f"[red]error:[/red] {exc}")
        return typer.Exit(2)

    @model_app.command("promote")
    def promote_command(stack: Annotated[str, STACK_OPTION]) -> None:
        """Make the stack's canary the stable version (triton.modelVersion) and end the rollout; the next
        `pulumi up` rolls every Triton pod and gateway to it and removes the canary's Deployment."""
        try:
            version = promote(stack, run)
        except RolloutError as exc:
            raise fail(exc) from None
        console.print(f"Stack {stack}: version {version} is now stable. Apply it: pulumi up --stack {stack}")

    @model_app.command("rollback")
    def rollback_command(stack: Annotated[str, STACK_OPTION]) -> None:
        """End the stack's canary without promoting it (also after the gateways rolled it back by themselves:
        this removes its Deployment); the next `pulumi up` applies it."""
        try:
            version = rollback(stack, run)
        except RolloutError as exc:
            raise fail(exc) from None
        console.print(f"Stack {stack}: canary {version} removed. Apply it: pulumi up --stack {stack}")

    @model_app.command("status")
    def status_command(
        stack: Annotated[
            str | None,
            typer.Option(
                "--stack",
                help="A deployed stack: read its Prometheus and decision through kubectl's context.",
            ),
        ] = None,
        url: Annotated[
            str | None,
            typer.Option(
                "--url", help="A gateway's base URL (the local stack, or a port-forwarded gateway)."
            ),
        ] = None,
        prometheus: Annotated[
            str,
            typer.Option(
                "--prometheus",
                help="With --stack: the cluster's Prometheus (kubectl -n monitoring port-forward "
                "svc/prometheus-server 9090:80).",
            ),
        ] = "http://127.0.0.1:9090",
    ) -> None:
        """Show both versions' figures over the rollback window (requests, errors, TTFT p95) and whether the
        gateways rolled the canary back."""
        if (stack is None) == (url is None):
            raise fail(RolloutError("give exactly one of --stack NAME or --url URL"))
        try:
            if url is not None:
                status = status_from_url(url)
            else:
                from infra.settings import load_stack_file
                from tritonform.commands.infra import stack_file

                namespace = load_stack_file(stack_file(str(stack))).workload.namespace
                status = status_from_cluster(namespace, prometheus)
        except RolloutError as exc:
            raise fail(exc) from None
        except Exception as exc:  # the Kubernetes client's errors (no context, no access) are user-facing
            raise fail(RolloutError(f"{type(exc).__name__}: {exc}")) from None
        Console().print(render_status(status))
