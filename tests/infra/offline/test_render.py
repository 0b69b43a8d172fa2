"""`tritonform render`: every Kubernetes object as YAML, strictly valid for the stack's Kubernetes version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.offline import Plan
from infra.offline.render import ManifestError, api_version_kind, render
from tests.infra.conftest import STACK_FILES, with_model_version
from tritonform.cli import app

runner = CliRunner()


def test_type_tokens_map_to_api_versions() -> None:
    assert api_version_kind("kubernetes:apps/v1:Deployment") == ("apps/v1", "Deployment")
    assert api_version_kind("kubernetes:core/v1:Service") == ("v1", "Service")
    assert api_version_kind("kubernetes:networking.k8s.io/v1:NetworkPolicy") == (
        "networking.k8s.io/v1",
        "NetworkPolicy",
    )


@pytest.mark.parametrize("serving", [False, True], ids=["first-up", "serving"])
@pytest.mark.parametrize("path", STACK_FILES, ids=lambda p: p.name)
def test_every_stack_renders_strictly_valid_manifests(path: Path, tmp_path: Path, serving: bool) -> None:
    """Before any model (the first `pulumi up`) and once a version serves (both servers run)."""
    stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    source = with_model_version(stack, tmp_path) if serving else path
    out = tmp_path / "manifests"
    result = runner.invoke(app, ["render", "--stack-file", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("0*.yaml"))]
    kinds = {d["kind"] for d in docs}
    always = {"Namespace", "Service", "NetworkPolicy", "Secret", "ServiceAccount"}
    servers = {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ScaledObject"}
    assert always <= kinds
    assert (servers <= kinds) if serving else not (servers & kinds)
    assert docs[0]["kind"] == "Namespace"
    releases = {r["name"]: r for r in yaml.safe_load((out / "helm-releases.yaml").read_text())}
    assert releases["keda"]["chart"] == "keda" and "prometheus-adapter" not in releases


@pytest.mark.parametrize("stack", ["aws-dev", "gcp-dev", "azure-dev"])
def test_a_scale_to_zero_stack_renders_with_its_scaled_object(stack: str, tmp_path: Path) -> None:
    """`triton.minReplicas: 0` renders on every cloud: Triton's Deployment at 0 replicas and KEDA's
    ScaledObject (a custom resource, reported as not schema-checked) allowed down to 0."""
    path = with_model_version(stack, tmp_path)
    document = yaml.safe_load(path.read_text())
    document["config"]["tritonform:triton"]["minReplicas"] = 0
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    out = tmp_path / "manifests"
    result = runner.invoke(app, ["render", "--stack-file", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for d in (yaml.safe_load(p.read_text()) for p in out.glob("0*.yaml"))
    }
    assert docs[("Deployment", "triton")]["spec"]["replicas"] == 0
    scaled = docs[("ScaledObject", "triton")]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["spec"]["minReplicaCount"] == 0
    assert ("HorizontalPodAutoscaler", "triton") not in docs


def test_an_invalid_object_names_the_object_and_field(plan_of: Callable[[str], Plan], tmp_path: Path) -> None:
    plan = plan_of("aws-dev")
    broken = []
    for res in plan.resources:
        if res.type == "kubernetes:core/v1:Service" and res.inputs["metadata"]["name"] == "triton":
            spec = {**res.inputs["spec"], "ports": [{"name": "http", "port": "eighty"}]}
            res = replace(res, inputs={**res.inputs, "spec": spec})
        broken.append(res)
    with pytest.raises(ManifestError, match=r"Service tritonform/triton: field spec.ports.0.port"):
        render(replace(plan, resources=broken), tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is written when an object is invalid"


def test_unknown_fields_fail_strict_validation(
    serving_plan_of: Callable[[str], Plan], tmp_path: Path
) -> None:
    plan = serving_plan_of("aws-dev")
    broken = [
        replace(r, inputs={**r.inputs, "spec": {**r.inputs["spec"], "replicaz": 3}})
        if r.type == "kubernetes:apps/v1:Deployment"
        else r
        for r in plan.resources
    ]
    with pytest.raises(ManifestError, match="replicaz"):
        render(replace(plan, resources=broken), tmp_path / "out")


def test_render_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    result = runner.invoke(app, ["render", "--stack", "aws-dev", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is not an earlier render" in result.output
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_render_replaces_its_own_earlier_output(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert runner.invoke(app, ["render", "--stack", "aws-dev", "--out", str(out)]).exit_code == 0
    (out / "stale.yaml").write_text("old")
    assert runner.invoke(app, ["render", "--stack", "aws-dev", "--out", str(out)]).exit_code == 0
    assert not (out / "stale.yaml").exists()
