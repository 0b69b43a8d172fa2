"""The trainer identity on every cloud (issue 17): bound to the trainer service account only, it may read
`datasets/` and write `checkpoints/` of the model bucket and nothing else; the serving identities stay
read-only. Held on the mocked plans of the three dev stacks."""

from __future__ import annotations

import json
from collections.abc import Callable

from infra.offline import Plan
from infra.platform.azure.identity import BLOB_READ, BLOB_WRITE_ACTIONS, trainer_condition

SUBJECT = "system:serviceaccount:tritonform:trainer"


def _actions(statement: dict[str, object]) -> set[str]:
    action = statement["Action"]
    return {action} if isinstance(action, str) else set(action)  # type: ignore[arg-type]


def test_aws_trainer_role_reads_datasets_and_writes_checkpoints_only(plan_of: Callable[[str], Plan]) -> None:
    plan = plan_of("aws-dev")
    role = plan.one("aws:iam/role:Role", "tf-dev-trainer").inputs
    trust = json.loads(role["assumeRolePolicy"])["Statement"]
    assert len(trust) == 1 and SUBJECT in trust[0]["Condition"]["StringEquals"].values()
    policy = json.loads(plan.one("aws:iam/rolePolicy:RolePolicy", "tf-dev-trainer").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert set(by_sid) == {"ListTrainingPrefixes", "ReadDatasets", "WriteCheckpoints"}
    assert by_sid["ReadDatasets"]["Resource"].endswith("/datasets/*")
    assert _actions(by_sid["ReadDatasets"]) == {"s3:GetObject", "s3:GetObjectVersion"}
    assert by_sid["WriteCheckpoints"]["Resource"].endswith("/checkpoints/*")
    assert "s3:PutObject" in _actions(by_sid["WriteCheckpoints"])
    assert by_sid["ListTrainingPrefixes"]["Condition"]["StringLike"]["s3:prefix"] == [
        "datasets/*",
        "checkpoints/*",
    ]
    assert not any(a.startswith("s3:Delete") for s in policy["Statement"] for a in _actions(s))
    # the serving roles still only read
    for name in ("tf-dev-model-reader", "tf-dev-gateway-reader"):
        reader = json.loads(plan.one("aws:iam/rolePolicy:RolePolicy", name).inputs["policy"])
        assert not any("Put" in a for s in reader["Statement"] for a in _actions(s))


def test_gcp_trainer_grants_are_conditioned_on_the_two_prefixes(plan_of: Callable[[str], Plan]) -> None:
    plan = plan_of("gcp-dev")
    binding = plan.one("gcp:serviceaccount/iAMMember:IAMMember", "tf-dev-trainer-workload-identity").inputs
    assert binding["member"].endswith("[tritonform/trainer]")
    grants = [r for r in plan.of_type("gcp:storage/bucketIAMMember:BucketIAMMember") if "-trainer-" in r.name]
    seen = {(g.inputs["role"], g.inputs["condition"]["expression"].split("/objects/")[1]) for g in grants}
    assert seen == {
        ("roles/storage.objectViewer", 'datasets/")'),
        ("roles/storage.objectViewer", 'checkpoints/")'),
        ("roles/storage.objectCreator", 'checkpoints/")'),
    }
    serving = [r for r in plan.of_type("gcp:storage/bucketIAMMember:BucketIAMMember") if "reader" in r.name]
    assert serving and all(r.inputs["role"] == "roles/storage.objectViewer" for r in serving)


def test_azure_trainer_role_holds_blob_data_actions_under_a_path_condition(
    plan_of: Callable[[str], Plan],
) -> None:
    plan = plan_of("azure-dev")
    definition = plan.one("azure-native:authorization:RoleDefinition", "tf-dev-trainer").inputs
    permissions = definition["permissions"]
    assert permissions == [{"dataActions": [BLOB_READ, *BLOB_WRITE_ACTIONS]}]  # no delete, no control plane
    assignment = plan.one("azure-native:authorization:RoleAssignment", "tf-dev-trainer").inputs
    assert assignment["condition"] == trainer_condition() and assignment["conditionVersion"] == "2.0"
    assert "StringLike 'datasets/*'" in assignment["condition"]
    write_part = assignment["condition"].split("AND")[1]
    assert "checkpoints/*" in write_part and "datasets/*" not in write_part
    credential = plan.one("azure-native:managedidentity:FederatedIdentityCredential", "tf-dev-trainer").inputs
    assert credential["subject"] == SUBJECT


def test_every_cloud_makes_the_trainer_service_account_and_exports_its_pod_labels(
    plan_of: Callable[[str], Plan],
) -> None:
    for stack in ("aws-dev", "gcp-dev", "azure-dev"):
        plan = plan_of(stack)
        account = plan.one("kubernetes:core/v1:ServiceAccount", "trainer").inputs
        assert account["metadata"]["namespace"] == "tritonform"
        assert account["automountServiceAccountToken"] is False
        assert account["metadata"]["annotations"], stack  # bound to the cloud identity
        assert "trainer_identity" in plan.outputs and isinstance(plan.outputs["trainer_pod_labels"], dict)
        peers = plan.one("kubernetes:networking.k8s.io/v1:NetworkPolicy", "training-peers").inputs
        assert peers["spec"]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "tritonform-training"
        }
