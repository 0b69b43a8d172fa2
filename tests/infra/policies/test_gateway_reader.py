"""The reader rule covers the gateway's own identity on GCP and Azure: read-only, on the model bucket, and
narrowed by a condition to the tokenizer files (rules_identity.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from infra.offline import Plan, PlannedResource
from infra.policies import rule
from infra.policies.base import Resource, StackRule, StackView
from infra.policies.offline import evaluate, mandatory_violations
from tests.infra.policies.factories import mutate, res, stack

RULE = "triton-identity-reads-only-its-bucket"
GCS = res("gcp:storage/bucket:Bucket", "tf-dev-models", uniformBucketLevelAccess=True)
GW_BINDING = res(
    "gcp:serviceaccount/iAMMember:IAMMember",
    "tf-dev-gw-reader-workload-identity",
    serviceAccountId="projects/p/serviceAccounts/tf-dev-gw-reader@p.iam.gserviceaccount.com",
    member="serviceAccount:p.svc.id.goog[tritonform/gateway]",
    role="roles/iam.workloadIdentityUser",
)
GW_GRANT = res(
    "gcp:storage/bucketIAMMember:BucketIAMMember",
    "tf-dev-gw-reader-objects",
    bucket="tf-dev-models-a1b2c3d",
    role="roles/storage.objectViewer",
    member="serviceAccount:tf-dev-gw-reader@p.iam.gserviceaccount.com",
    condition={
        "title": "gw-reader-objects",
        "expression": 'resource.name.startsWith("projects/_/buckets/tf-dev-models-a1b2c3d/objects/models/'
        'versions/") && (resource.name.endsWith("/tokenizer.json"))',
    },
)
GCP_GATEWAY = [GCS, GW_BINDING, GW_GRANT]

AZ_IDENTITY = res("azure-native:managedidentity:UserAssignedIdentity", "tf-dev-gateway-reader")
AZ_FIC = res(
    "azure-native:managedidentity:FederatedIdentityCredential",
    "tf-dev-gateway-reader",
    resourceName="tf-dev-gateway-readera1b2c3d",
    subject="system:serviceaccount:tritonform:gateway",
)
CONTAINER = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/a1"
PATH = "@Resource[Microsoft.Storage/storageAccounts/blobServices/containers/blobs:path]"
AZ_GRANT = res(
    "azure-native:authorization:RoleAssignment",
    "tf-dev-gateway-reader",
    principalType="ServicePrincipal",
    roleDefinitionId="/x/providers/Microsoft.Authorization/roleDefinitions/2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    scope=f"{CONTAINER}/blobServices/default/containers/models",
    condition=f"((!(ActionMatches{{'x/blobs/read'}})) OR ({PATH} StringLike 'models/*/tokenizer.json'))",
    conditionVersion="2.0",
)
AZ_CONTAINER = res("azure-native:storage:BlobContainer", "tf-dev-models", containerName="models")
AZURE_GATEWAY = [AZ_IDENTITY, AZ_FIC, AZ_GRANT, AZ_CONTAINER]
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"


def _replaced(resources: list[Resource], new: Resource) -> StackView:
    return stack(*[new if (r.type, r.name) == (new.type, new.name) else r for r in resources], env="dev")


def _messages(view: StackView) -> list[str]:
    stack_rule = rule(RULE)
    assert isinstance(stack_rule, StackRule)
    return [v.message for v in stack_rule.check(view)]


def test_the_narrowed_gateway_readers_pass() -> None:
    assert _messages(stack(*GCP_GATEWAY, env="dev")) == []
    assert _messages(stack(*AZURE_GATEWAY, env="dev")) == []


@pytest.mark.parametrize(
    ("view", "words"),
    [
        (
            _replaced(GCP_GATEWAY, mutate(GW_GRANT, "condition", None)),
            "add an IAM condition",
        ),
        (
            _replaced(GCP_GATEWAY, mutate(GW_GRANT, "condition", {"title": "t", "expression": "true"})),
            "add an IAM condition",
        ),
        (_replaced(GCP_GATEWAY, mutate(GW_GRANT, "role", "roles/storage.objectAdmin")), "read-only"),
        (_replaced(GCP_GATEWAY, mutate(GW_GRANT, "bucket", "elsewhere")), "not the model bucket"),
        (_replaced(AZURE_GATEWAY, mutate(AZ_GRANT, "condition", None)), "add a condition (version 2.0)"),
        (
            _replaced(AZURE_GATEWAY, mutate(AZ_GRANT, "conditionVersion", "1.0")),
            "add a condition (version 2.0)",
        ),
        (
            _replaced(
                AZURE_GATEWAY, mutate(AZ_GRANT, "roleDefinitionId", "/x/b24988ac-6180-42a0-ab88-20f7382dd24c")
            ),
            "use Storage Blob Data Reader",
        ),
    ],
    ids=[
        "gcp-no-condition",
        "gcp-condition-not-on-name",
        "gcp-writer",
        "gcp-other-bucket",
        "azure-no-condition",
        "azure-condition-v1",
        "azure-contributor",
    ],
)
def test_a_gateway_reader_that_reads_too_much_is_flagged(view: StackView, words: str) -> None:
    found = _messages(view)
    assert found and any("gateway" in m and words in m for m in found), found


def _with(plan: Plan, type_: str, name: str, **changes: Any) -> Plan:
    resources = []
    for r in plan.resources:
        if (r.type, r.name) == (type_, name):
            inputs = {k: v for k, v in {**r.inputs, **changes}.items() if v is not None}
            r = PlannedResource(r.type, r.name, r.parent, inputs, r.urn)
        resources.append(r)
    return dataclasses.replace(plan, resources=resources)


@pytest.mark.parametrize(
    ("stack_name", "type_", "name"),
    [
        ("gcp-dev", "gcp:storage/bucketIAMMember:BucketIAMMember", "tf-dev-gw-reader-objects"),
        ("azure-dev", "azure-native:authorization:RoleAssignment", "tf-dev-gateway-reader"),
    ],
)
def test_the_shipped_gateway_reader_passes_and_fails_without_its_condition(
    plan_of: Callable[[str], Plan], stack_name: str, type_: str, name: str
) -> None:
    plan = plan_of(stack_name)
    assert not [r for r in mandatory_violations(evaluate(plan)) if r.rule == RULE]
    widened = _with(plan, type_, name, condition=None)
    flagged = {(r.rule, r.resource) for r in mandatory_violations(evaluate(widened))}
    assert (RULE, f"{type_}::{name}") in flagged
