"""The rules over real offline plans: the shipped stacks pass, unsafe ones are named."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.offline import Plan, PlannedResource
from infra.policies.offline import PolicyResult, evaluate, mandatory_violations
from tests.infra.conftest import STACKS, planned

DEV_STACKS = ["aws-dev", "gcp-dev", "azure-dev"]
PROD_STACKS = ["aws-prod", "gcp-prod", "azure-prod"]


def _with(plan: Plan, type_: str, name: str, **changes: object) -> Plan:
    """A copy of a cached plan with one resource's inputs changed (a key set to None is removed)."""
    resources = []
    for r in plan.resources:
        if (r.type, r.name) == (type_, name):
            inputs = {k: v for k, v in {**r.inputs, **changes}.items() if v is not None}
            r = PlannedResource(r.type, r.name, r.parent, inputs, r.urn)
        resources.append(r)
    assert resources != plan.resources, f"{type_}::{name} is not in the plan"
    return dataclasses.replace(plan, resources=resources)


@pytest.mark.parametrize("stack", DEV_STACKS + PROD_STACKS)
def test_shipped_stacks_have_no_mandatory_violation(plan_of: Callable[[str], Plan], stack: str) -> None:
    results = evaluate(plan_of(stack))
    assert mandatory_violations(results) == [], "\n".join(
        f"{r.rule} {r.resource}: {r.message}" for r in results
    )


@pytest.mark.parametrize("stack", DEV_STACKS + PROD_STACKS)
def test_a_scale_to_zero_stack_has_no_mandatory_violation(stack: str, tmp_path: Path) -> None:
    """`triton.minReplicas: 0` (Triton scales to zero, KEDA brings it back) passes every mandatory rule."""
    import yaml

    from tests.infra.conftest import with_model_version

    path = with_model_version(stack, tmp_path)
    document = yaml.safe_load(path.read_text())
    document["config"]["tritonform:triton"]["minReplicas"] = 0
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    plan = planned(path)
    assert plan.settings.triton_min_replicas == 0
    results = evaluate(plan)
    assert mandatory_violations(results) == [], "\n".join(
        f"{r.rule} {r.resource}: {r.message}" for r in results
    )


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_the_workload_is_judged(serving_plan_of: Callable[[str], Plan], stack: str) -> None:
    """The workload is in the plan (once a model version serves), and its GPU Deployment and gateway
    Service pass every rule."""
    plan = serving_plan_of(stack)
    workloads = [r for r in plan.resources if r.type == "kubernetes:apps/v1:Deployment"]
    assert workloads, "the Kubernetes workload is missing from the plan"
    assert any("nvidia.com/gpu" in str(r.inputs) for r in workloads), "no Deployment asks for a GPU"
    judged = {r.resource for r in evaluate(plan)}
    assert not any(f"kubernetes:apps/v1:Deployment::{r.name}" in judged for r in workloads)


def test_results_shape_and_order(plan_of: Callable[[str], Plan]) -> None:
    plan = _with(plan_of("aws-dev"), "aws:eks/nodeGroup:NodeGroup", "tf-dev-gpu", taints=None)
    plan = _with(plan, "aws:s3/bucketPolicy:BucketPolicy", "tf-dev-models-tls-only", policy="{}")
    results = evaluate(plan)
    assert [r.level for r in results] == sorted((r.level for r in results), key=lambda lv: lv != "mandatory")
    assert {r.level for r in results} == {"mandatory", "advisory"}
    assert all(set(r.as_dict()) == {"rule", "resource", "level", "message"} for r in results)
    assert [r.rule for r in mandatory_violations(results)] == ["gpu-pools-tainted"]


@pytest.mark.parametrize(
    ("stack", "type_", "name", "changes", "rule", "resource"),
    [
        ("aws-dev", "aws:eks/nodeGroup:NodeGroup", "tf-dev-gpu", {"taints": None}, "gpu-pools-tainted", None),
        (
            "gcp-dev",
            "gcp:storage/bucket:Bucket",
            "tf-dev-models",
            {"publicAccessPrevention": "inherited"},
            "buckets-not-public",
            None,
        ),
        (
            "azure-dev",
            "azure-native:storage:BlobContainer",
            "tf-dev-models",
            {"publicAccess": "Container"},
            "buckets-not-public",
            None,
        ),
        (
            "azure-dev",
            "azure-native:containerservice:AgentPool",
            "tf-dev-gpu",
            {"nodeTaints": []},
            "gpu-pools-tainted",
            None,
        ),
        (
            "aws-dev",
            "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
            "tf-dev-models",
            {"blockPublicPolicy": False},
            "buckets-not-public",
            None,
        ),
        (
            "aws-dev",
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
            "tf-dev-models",
            {"bucket": "another-bucket-id"},
            "buckets-encrypted",
            "aws:s3/bucket:Bucket::tf-dev-models",
        ),
        (
            "gcp-dev",
            "gcp:storage/bucketIAMMember:BucketIAMMember",
            "tf-dev-reader-objects",
            {"role": "roles/storage.admin"},
            "triton-identity-reads-only-its-bucket",
            None,
        ),
        (
            "gcp-prod",
            "gcp:container/cluster:Cluster",
            "tf-prod-gke",
            {"privateClusterConfig": {"enablePrivateNodes": True}, "masterAuthorizedNetworksConfig": None},
            "kubernetes-api-not-public-in-prod",
            None,
        ),
    ],
    ids=[
        "eks-untainted",
        "gcs-public",
        "azure-container-public",
        "aks-untainted",
        "s3-policy-unblocked",
        "s3-unencrypted",
        "gcs-reader-admin",
        "gke-prod-open",
    ],
)
def test_mutated_plan_is_flagged(
    plan_of: Callable[[str], Plan],
    stack: str,
    type_: str,
    name: str,
    changes: dict[str, object],
    rule: str,
    resource: str | None,
) -> None:
    results = mandatory_violations(evaluate(_with(plan_of(stack), type_, name, **changes)))
    assert PolicyResult in {type(r) for r in results}
    assert (rule, resource or f"{type_}::{name}") in {(r.rule, r.resource) for r in results}, results


def test_aws_reader_policy_with_write_access_is_flagged(plan_of: Callable[[str], Plan]) -> None:
    plan = plan_of("aws-dev")
    original = plan.one("aws:iam/rolePolicy:RolePolicy", "tf-dev-model-reader").inputs["policy"]
    widened = original.replace('"s3:GetObject"', '"s3:PutObject"')
    results = evaluate(_with(plan, "aws:iam/rolePolicy:RolePolicy", "tf-dev-model-reader", policy=widened))
    assert [(r.rule, r.level) for r in results] == [("triton-identity-reads-only-its-bucket", "mandatory")]
    assert "s3:putobject" in results[0].message


def test_unsafe_stack_file_is_flagged(write_stack: Callable[..., Path]) -> None:
    """A prod stack whose Kubernetes API is public to 0.0.0.0/0 fails, naming the rule."""
    text = (STACKS / "Pulumi.aws-prod.yaml").read_text()
    unsafe = text.replace(
        "    endpointPublicAccess: false\n",
        "    endpointPublicAccess: true\n    endpointAllowedCidrs:\n      - 0.0.0.0/0\n",
    )
    assert unsafe != text
    results = mandatory_violations(evaluate(planned(write_stack(unsafe, name="unsafe-prod"))))
    assert ("kubernetes-api-not-public-in-prod", "aws:eks/cluster:Cluster::tf-prod-eks") in {
        (r.rule, r.resource) for r in results
    }


def _edit(plan: Plan, type_: str, name: str, edit: Callable[[dict[str, Any]], None]) -> Plan:
    """A copy of a cached plan with one resource's inputs changed in place by `edit` (on a deep copy)."""
    found = [r for r in plan.resources if (r.type, r.name) == (type_, name)]
    assert found, f"{type_}::{name} is missing from the plan"
    inputs = copy.deepcopy(found[0].inputs)
    edit(inputs)
    return _with(plan, type_, name, **inputs)


def _untolerate(inputs: dict[str, Any]) -> None:
    inputs["spec"]["template"]["spec"].pop("tolerations", None)


def _public_lb(inputs: dict[str, Any]) -> None:
    inputs["spec"]["type"] = "LoadBalancer"
    inputs["metadata"]["annotations"] = {}


def _literal_key(inputs: dict[str, Any]) -> None:
    inputs["spec"]["template"]["spec"]["containers"][0].setdefault("env", []).append(
        {"name": "OPENAI_API_KEY", "value": "sk-live-0123456789"}
    )


@pytest.mark.parametrize("stack", DEV_STACKS)
@pytest.mark.parametrize(
    ("type_", "name", "edit", "rule"),
    [
        ("kubernetes:apps/v1:Deployment", "triton", _untolerate, "gpu-pods-tolerate-gpu-taint"),
        ("kubernetes:core/v1:Service", "gateway", _public_lb, "only-public-entry-is-api-gateway"),
        ("kubernetes:apps/v1:Deployment", "gateway", _literal_key, "no-plaintext-secrets"),
    ],
    ids=["triton-untolerated", "gateway-public-lb", "gateway-literal-key"],
)
def test_unsafe_workload_is_flagged(
    serving_plan_of: Callable[[str], Plan],
    stack: str,
    type_: str,
    name: str,
    edit: Callable[..., None],
    rule: str,
) -> None:
    results = mandatory_violations(evaluate(_edit(serving_plan_of(stack), type_, name, edit)))
    assert (rule, f"{type_}::{name}") in {(r.rule, r.resource) for r in results}, results


def test_config_group_manifests_are_judged(plan_of: Callable[[str], Plan]) -> None:
    """Objects inside a yaml/v2 ConfigGroup (not expanded under mocks) are judged like typed resources."""
    plan = plan_of("gcp-dev")
    manifest = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: leak}\nspec: {type: LoadBalancer}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {HF_TOKEN: hf_0123456789}\n"
    )
    group = PlannedResource("kubernetes:yaml/v2:ConfigGroup", "extras", None, {"yaml": manifest}, "urn:x")
    results = evaluate(dataclasses.replace(plan, resources=[*plan.resources, group]))
    assert {(r.rule, r.resource) for r in mandatory_violations(results)} == {
        ("only-public-entry-is-api-gateway", "kubernetes:core/v1:Service::extras:leak"),
        ("no-plaintext-secrets", "kubernetes:core/v1:ConfigMap::extras:cfg"),
    }
