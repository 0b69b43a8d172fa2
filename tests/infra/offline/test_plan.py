"""`tritonform plan`: runs for every stack file, prints a tree or JSON, and fails cleanly on bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.catalog import KUBERNETES_CALENDAR_CHECKED
from infra.offline import Plan
from tests.infra.conftest import STACK_FILES
from tests.infra.conftest import STACKS as STACKS_DIR
from tritonform.cli import app

runner = CliRunner()
CLOUDS = ("aws", "gcp", "azure")


@pytest.fixture(autouse=True)
def _calendar_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """Readiness is judged on the day the catalogue's Kubernetes dates were read, so that these tests
    do not change verdict as the calendar moves (tests/infra/test_catalog.py covers other days)."""
    monkeypatch.setattr("tritonform.commands.infra.today", lambda: KUBERNETES_CALENDAR_CHECKED)


def _stack_name(path: Path) -> str:
    return path.name.removeprefix("Pulumi.").removesuffix(".yaml")


@pytest.mark.parametrize("path", STACK_FILES, ids=_stack_name)
def test_plan_json_runs_for_every_stack_file(path: Path) -> None:
    result = runner.invoke(app, ["plan", "--stack", _stack_name(path), "--json"])
    # The examples hold documentation addresses and placeholder ids: the plan is shown in full, and
    # exits 2 saying which keys to set (on a Kubernetes version every cloud creates today).
    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    assert doc["readiness"]["ready"] is False and doc["readiness"]["blockers"]
    assert not [b for b in doc["readiness"]["blockers"] if "kubernetesVersion" in b]
    assert all("tritonform:" in b for b in doc["readiness"]["blockers"])
    assert "not ready for `pulumi up`" in result.stderr and "tritonform init" in result.stderr
    assert doc["stack"] == _stack_name(path)
    assert doc["cloud"] in ("aws", "gcp", "azure")
    assert doc["resources"], "a plan with no resources"
    for res in doc["resources"]:
        assert set(res) == {"type", "name", "parent", "inputs"}
    parents = {f"{r['type']}::{r['name']}" for r in doc["resources"]}
    assert all(r["parent"] is None or r["parent"] in parents for r in doc["resources"])
    assert doc["outputs"]["kubeconfig"] == "[secret]"


def test_plan_json_shows_the_issue_essentials_for_aws() -> None:
    doc = json.loads(runner.invoke(app, ["plan", "--stack", "aws-dev", "--json"]).stdout)
    types = {r["type"] for r in doc["resources"]}
    assert {
        "aws:eks/cluster:Cluster",
        "aws:eks/nodeGroup:NodeGroup",
        "aws:s3/bucket:Bucket",
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        "aws:iam/role:Role",
    } <= types
    secrets = [r for r in doc["resources"] if r["type"] == "pulumi:providers:kubernetes"]
    assert secrets[0]["inputs"]["kubeconfig"] == "[secret]"


def test_plan_tree_is_readable() -> None:
    result = runner.invoke(app, ["plan", "--stack", "aws-dev"])
    assert result.exit_code == 2, result.output  # the example's documentation ranges
    assert "aws-dev (aws, us-east-1)" in result.stdout
    assert "tritonform:platform:GpuNodePool" in result.stdout
    assert "outputs" in result.stdout


def test_unknown_stack_lists_known_ones() -> None:
    result = runner.invoke(app, ["plan", "--stack", "nope"])
    assert result.exit_code == 2
    assert "no stack 'nope'" in result.output and "aws-dev" in result.output
    assert "Traceback" not in result.output


def test_invalid_stack_file_names_the_key_without_a_traceback(write_stack: Callable[..., Path]) -> None:
    path = write_stack(
        "config:\n  tritonform:cloud: aws\n  tritonform:region: us-east-1\n"
        "  tritonform:gpuPool:\n    instanceType: t3.large\n    minNodes: 3\n    maxNodes: 1\n"
    )
    result = runner.invoke(app, ["plan", "--stack-file", str(path)])
    assert result.exit_code == 2
    assert "tritonform:gpuPool" in result.output
    assert "Traceback" not in result.output


def test_exactly_one_stack_selector_is_required(write_stack: Callable[..., Path]) -> None:
    assert runner.invoke(app, ["plan"]).exit_code == 2
    path = write_stack("config: {}\n")
    both = runner.invoke(app, ["plan", "--stack", "aws-dev", "--stack-file", str(path)])
    assert both.exit_code == 2 and "exactly one" in both.output


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "plan" in result.stdout
    assert "offline" in runner.invoke(app, ["plan", "--help"]).stdout


def test_planning_one_cloud_does_not_import_the_other_clouds_sdks() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from infra.offline import plan_stack; "
        "plan_stack(Path('stacks/Pulumi.aws-dev.yaml')); "
        "print(sorted(m for m in ('pulumi_gcp', 'pulumi_azure_native', 'torch') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_a_stack_with_the_users_values_plans_clean(
    ready_stack: Callable[[str, str], Path], cloud: str, environment: str
) -> None:
    result = runner.invoke(app, ["plan", "--stack-file", str(ready_stack(cloud, environment)), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["readiness"]["ready"] is True and doc["readiness"]["blockers"] == []
    assert [p for p in doc["policies"] if p["level"] == "mandatory"] == []


@pytest.mark.parametrize("stack", ["aws-dev", "gcp-dev", "azure-dev"])
def test_plan_json_reports_policies_and_dev_stacks_have_no_mandatory_violations(stack: str) -> None:
    result = runner.invoke(app, ["plan", "--stack", stack, "--json"])
    assert result.exit_code == 2, result.output  # not ready (example values), but no policy violation
    policies = json.loads(result.stdout)["policies"]
    assert [p for p in policies if p["level"] == "mandatory"] == []
    assert all(set(p) == {"rule", "resource", "level", "message"} for p in policies)


def test_an_unsafe_stack_fails_plan_naming_the_rule(write_stack: Callable[..., Path]) -> None:
    unsafe = (
        (STACKS_DIR / "Pulumi.aws-prod.yaml")
        .read_text()
        .replace(
            "    endpointPublicAccess: false\n",
            "    endpointPublicAccess: true\n    endpointAllowedCidrs:\n      - 0.0.0.0/0\n",
        )
    )
    assert "0.0.0.0/0" in unsafe
    path = write_stack(unsafe, "unsafe-prod")
    result = runner.invoke(app, ["plan", "--stack-file", str(path), "--json"])
    assert result.exit_code == 1
    policies = json.loads(result.stdout)["policies"]
    hits = [p for p in policies if p["rule"] == "kubernetes-api-not-public-in-prod"]
    assert hits and hits[0]["level"] == "mandatory" and "aws:eks/cluster:Cluster" in hits[0]["resource"]
    tree = runner.invoke(app, ["plan", "--stack-file", str(path)])
    assert tree.exit_code == 1 and "kubernetes-api-not-public-in-prod" in tree.output


def test_upload_finds_the_prefix_triton_serves_from_in_the_stack_outputs(
    plan_of: Callable[[str], Plan],
) -> None:
    from tritonform.commands.upload import STACK_OUTPUT_KEYS

    outputs = plan_of("aws-dev").outputs
    (key,) = STACK_OUTPUT_KEYS
    assert outputs[key] == f"{outputs['bucket_uri']}/{plan_of('aws-dev').settings.triton.model_prefix}"
