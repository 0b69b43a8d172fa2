"""The three clouds keep one contract: same outputs, a GPU pool with the same taint that Triton's scheduling
matches, a bucket URI in the scheme Triton reads, and a reader identity scoped to that bucket alone."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pulumi.runtime.sync_await import _sync_await

from infra.offline import Plan, PlannedResource
from infra.offline.mocks.azure import SUBSCRIPTION
from infra.platform.base import GPU_POOL_LABEL, GPU_TAINT_KEY, IMAGE_NAMES
from tests.infra.platform.provisioned import provisioned

DEV_STACKS = ["aws-dev", "gcp-dev", "azure-dev"]
SCHEMES = {"aws": "s3://", "gcp": "gs://", "azure": "as://"}


# -- how each cloud spells a GPU pool, in neutral terms (test-side only) -------------------------
def _gpu_pool(plan: Plan) -> PlannedResource:
    tokens = {
        "aws": "aws:eks/nodeGroup:NodeGroup",
        "gcp": "gcp:container/nodePool:NodePool",
        "azure": "azure-native:containerservice:AgentPool",
    }
    pools = [r for r in plan.of_type(tokens[plan.cloud]) if r.parent and "gpu-pool" in r.parent]
    assert len(pools) == 1
    return pools[0]


def _taints(plan: Plan, pool: PlannedResource) -> list[dict[str, str]]:
    effects = {"NO_SCHEDULE": "NoSchedule", "NoSchedule": "NoSchedule"}
    if plan.cloud == "aws":
        raw = pool.inputs["taints"]
    elif plan.cloud == "gcp":
        raw = pool.inputs["nodeConfig"]["taints"]
    else:
        raw = []
        for text in pool.inputs["nodeTaints"]:
            key_value, effect = text.split(":")
            key, value = key_value.split("=")
            raw.append({"key": key, "value": value, "effect": effect})
    return [{"key": t["key"], "value": t["value"], "effect": effects[t["effect"]]} for t in raw]


def _labels(plan: Plan, pool: PlannedResource) -> dict[str, str]:
    if plan.cloud == "gcp":
        return dict(pool.inputs["nodeConfig"]["labels"])
    return dict(pool.inputs["labels" if plan.cloud == "aws" else "nodeLabels"])


def _tolerated(taint: dict[str, str], tolerations: list[dict[str, str]]) -> bool:
    for t in tolerations:
        same_key = t["key"] == taint["key"] and t.get("effect") in (None, taint["effect"])
        if same_key and (t["operator"] == "Exists" or t.get("value") == taint["value"]):
            return True
    return False


def _reader_scopes(plan: Plan) -> Iterator[str]:
    """Every place the reader identity is granted access."""
    if plan.cloud == "aws":
        policy = json.loads(
            plan.one("aws:iam/rolePolicy:RolePolicy", f"{plan.settings.name}-model-reader").inputs["policy"]
        )
        for statement in policy["Statement"]:
            resources = statement["Resource"]
            yield from [resources] if isinstance(resources, str) else resources
    elif plan.cloud == "gcp":
        yield from (r.inputs["bucket"] for r in plan.of_type("gcp:storage/bucketIAMMember:BucketIAMMember"))
    else:
        for r in plan.of_type("azure-native:authorization:RoleAssignment"):
            if r.parent and "ReaderIdentity" in r.parent:
                yield r.inputs["scope"]


def _bucket_ids(plan: Plan) -> set[str]:
    """What a grant on the model bucket (or its objects, or its container) may name."""
    if plan.cloud == "aws":
        name = plan.outputs["bucket_uri"].removeprefix("s3://")
        return {f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"}
    if plan.cloud == "gcp":
        return {plan.outputs["bucket_uri"].removeprefix("gs://")}
    account, container = plan.outputs["bucket_uri"].removeprefix("as://").split("/")
    group = plan.one("azure-native:storage:BlobContainer").inputs["resourceGroupName"]
    return {
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/Microsoft.Storage"
        f"/storageAccounts/{account}/blobServices/default/containers/{container}"
    }


def _network_policy_enforcement(plan: Plan) -> str:
    """How the cluster enforces NetworkPolicies, in the cloud's own words ("" when it only accepts them)."""
    if plan.cloud == "aws":  # the managed VPC CNI with its network policy agent on
        cni = [a for a in plan.of_type("aws:eks/addon:Addon") if a.inputs["addonName"] == "vpc-cni"]
        config = json.loads(cni[0].inputs.get("configurationValues") or "{}") if len(cni) == 1 else {}
        return "vpc-cni enableNetworkPolicy" if config.get("enableNetworkPolicy") == "true" else ""
    if plan.cloud == "gcp":  # Dataplane V2
        datapath = plan.one("gcp:container/cluster:Cluster").inputs.get("datapathProvider")
        return "Dataplane V2" if datapath == "ADVANCED_DATAPATH" else ""
    profile = plan.one("azure-native:containerservice:ManagedCluster").inputs["networkProfile"]
    cilium = profile.get("networkPolicy") == "cilium" and profile.get("networkDataplane") == "cilium"
    return "Cilium" if cilium else ""


# -- the contract ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", DEV_STACKS)
def test_same_output_names_on_every_cloud(stack: str) -> None:
    assert set(provisioned(stack).plan.outputs) == set(provisioned("aws-dev").plan.outputs)


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_kubeconfig_is_a_secret_everywhere(stack: str) -> None:
    assert provisioned(stack).plan.outputs["kubeconfig"] == "[secret]"


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_gpu_pool_carries_the_same_taint_and_label(stack: str) -> None:
    plan = provisioned(stack).plan
    pool = _gpu_pool(plan)
    assert {"key": GPU_TAINT_KEY, "value": "present", "effect": "NoSchedule"} in _taints(plan, pool)
    assert _labels(plan, pool)[GPU_POOL_LABEL] == "gpu"


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_scheduling_matches_the_pool(stack: str) -> None:
    plan = provisioned(stack).plan
    pool = _gpu_pool(plan)
    selector, tolerations = plan.outputs["gpu_node_selector"], plan.outputs["gpu_tolerations"]
    assert selector.items() <= _labels(plan, pool).items()
    untolerated = [t for t in _taints(plan, pool) if not _tolerated(t, tolerations)]
    assert untolerated == []


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_gpu_pool_autoscales_within_the_configured_bounds(stack: str) -> None:
    plan = provisioned(stack).plan
    pool, gpu = _gpu_pool(plan), plan.settings.gpu_pool
    bounds = {
        "aws": lambda i: (i["scalingConfig"]["minSize"], i["scalingConfig"]["maxSize"]),
        "gcp": lambda i: (i["autoscaling"]["totalMinNodeCount"], i["autoscaling"]["totalMaxNodeCount"]),
        "azure": lambda i: (i["minCount"], i["maxCount"]),
    }
    get: Callable[[dict[str, Any]], tuple[int, int]] = bounds[plan.cloud]
    assert get(pool.inputs) == (gpu.min_nodes, gpu.max_nodes)


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_bucket_uri_uses_the_scheme_triton_reads(stack: str) -> None:
    plan = provisioned(stack).plan
    uri = plan.outputs["bucket_uri"]
    assert uri.startswith(SCHEMES[plan.cloud]) and len(uri) > len(SCHEMES[plan.cloud])


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_reader_identity_is_scoped_to_the_model_bucket_only(stack: str) -> None:
    plan = provisioned(stack).plan
    scopes = set(_reader_scopes(plan))
    assert scopes and scopes <= _bucket_ids(plan)


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_reader_binds_through_service_account_annotations(stack: str) -> None:
    p = provisioned(stack)
    annotations = p.value(p.platform.reader.service_account_annotations)
    assert len(annotations) == 1 and all(annotations.values())
    assert p.plan.outputs["model_reader_identity"]


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_network_policies_are_enforced_not_only_accepted(stack: str) -> None:
    """The workload's NetworkPolicies (Triton only from the gateway, the gateway only from the edge) are the
    cluster's only wall around Triton, which has no authentication."""
    assert _network_policy_enforcement(provisioned(stack).plan)


# -- the edge and the registry -------------------------------------------------------------------
@pytest.mark.parametrize("stack", DEV_STACKS)
def test_edge_endpoint_is_https(stack: str) -> None:
    url = provisioned(stack).plan.outputs["endpoint_url"]
    assert url.startswith("https://") and len(url) > len("https://")


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_gateway_exposure_is_never_a_public_load_balancer(stack: str) -> None:
    exposure = provisioned(stack).cloud.gateway_exposure()
    assert exposure.source_ranges and "0.0.0.0/0" not in exposure.source_ranges
    if exposure.type == "LoadBalancer":
        internal = {k: v for k, v in exposure.annotations.items() if "internal" in k or "scheme" in k}
        assert any(v in ("true", "internal") for v in internal.values()), exposure.annotations
    else:
        assert exposure.type in ("ClusterIP", "NodePort")


@pytest.mark.parametrize("stack", DEV_STACKS)
def test_registry_exposes_every_image_with_secret_push_credentials(stack: str) -> None:
    p = provisioned(stack)
    registry = p.platform.registry
    address = p.value(registry.address)
    assert set(registry.repositories) == set(IMAGE_NAMES)
    for image, repository in registry.repositories.items():
        value = p.value(repository)
        assert value.startswith(address) and value.endswith(image)
    assert _sync_await(registry.password.is_secret())
