"""Cluster rules: GPU node pools are tainted, and the Kubernetes API is not open to the internet."""

from __future__ import annotations

import re
from collections.abc import Iterator

from infra.policies.base import (
    UNKNOWN,
    Resource,
    ResourceRule,
    StackRule,
    StackView,
    Violation,
    as_list,
    is_false,
    is_true,
    is_world,
)

GPU_TAINT_KEY = "nvidia.com/gpu"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
EKS_NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
GKE_CLUSTER = "gcp:container/cluster:Cluster"
GKE_NODE_POOL = "gcp:container/nodePool:NodePool"
AKS_CLUSTER = "azure-native:containerservice:ManagedCluster"
AKS_AGENT_POOL = "azure-native:containerservice:AgentPool"

_AWS_GPU_INSTANCE = re.compile(r"^(p\d|g\d|gr\d)[a-z0-9-]*\.", re.IGNORECASE)
_GCP_GPU_MACHINE = re.compile(r"^(a2|a3|a4|g2|g4)-")
_AZURE_GPU_VM = re.compile(r"^Standard_N", re.IGNORECASE)
_NO_SCHEDULE = {"NO_SCHEDULE", "NO_EXECUTE", "NoSchedule", "NoExecute"}


def _tainted(taints: object) -> bool:
    """Structured taints (EKS `taints`, GKE `nodeConfig.taints`) that keep non-GPU pods away."""
    return any(
        isinstance(t, dict) and t.get("key") == GPU_TAINT_KEY and t.get("effect") in _NO_SCHEDULE
        for t in as_list(taints)
    )


def _tainted_aks(taints: object) -> bool:
    """AKS `nodeTaints` strings: `key=value:Effect` or `key:Effect`."""
    for taint in as_list(taints):
        if isinstance(taint, str) and ":" in taint:
            key_value, effect = taint.rsplit(":", 1)
            if key_value.split("=", 1)[0] == GPU_TAINT_KEY and effect in _NO_SCHEDULE:
                return True
    return False


_FIX = f"add the taint {GPU_TAINT_KEY}=present:NoSchedule so only pods that tolerate it (GPU pods) land there"


def gpu_pools_tainted(resource: Resource) -> Iterator[str]:
    if resource.type == EKS_NODE_GROUP:
        ami = str(resource.get("amiType", ""))
        types = [str(t) for t in as_list(resource.get("instanceTypes"))]
        gpu = (
            "NVIDIA" in ami.upper() or "GPU" in ami.upper() or any(_AWS_GPU_INSTANCE.match(t) for t in types)
        )
        if gpu and not _tainted(resource.get("taints")):
            yield f"EKS GPU node group ({', '.join(types) or ami}) has no {GPU_TAINT_KEY} taint; {_FIX}."
    elif resource.type == GKE_NODE_POOL:
        config = resource.get("nodeConfig", {})
        if _gke_gpu(config) and not _tainted(config.get("taints")):
            yield f"GKE GPU node pool has no {GPU_TAINT_KEY} taint in nodeConfig.taints; {_FIX}."
    elif resource.type == GKE_CLUSTER:
        pools = [("nodeConfig", resource.get("nodeConfig", {}))]
        pools += [
            (f"nodePools[{i}]", p.get("nodeConfig", {}))
            for i, p in enumerate(as_list(resource.get("nodePools")))
            if isinstance(p, dict)
        ]
        for where, config in pools:
            if _gke_gpu(config) and not _tainted(config.get("taints")):
                yield f"GKE cluster {where} has GPUs but no {GPU_TAINT_KEY} taint; {_FIX}."
    elif resource.type == AKS_AGENT_POOL:
        if _aks_gpu(resource.props) and not _tainted_aks(resource.get("nodeTaints")):
            yield (
                f"AKS GPU agent pool ({resource.get('vmSize')}) has no {GPU_TAINT_KEY} taint in nodeTaints; "
                f"{_FIX}."
            )
    elif resource.type == AKS_CLUSTER:
        for profile in as_list(resource.get("agentPoolProfiles")):
            if (
                isinstance(profile, dict)
                and _aks_gpu(profile)
                and not _tainted_aks(profile.get("nodeTaints"))
            ):
                yield (
                    f"AKS agent pool profile {profile.get('name')!r} ({profile.get('vmSize')}) has no "
                    f"{GPU_TAINT_KEY} taint in nodeTaints; {_FIX}."
                )


def _gke_gpu(config: object) -> bool:
    if not isinstance(config, dict):
        return False
    return bool(as_list(config.get("guestAccelerators"))) or bool(
        _GCP_GPU_MACHINE.match(str(config.get("machineType", "")))
    )


def _aks_gpu(profile: object) -> bool:
    if not isinstance(profile, dict):
        return False
    return bool(_AZURE_GPU_VM.match(str(profile.get("vmSize", "")))) or "gpuProfile" in profile


# -- Kubernetes API exposure -------------------------------------------------------------------------


def _eks_open(cluster: Resource) -> str | None:
    vpc = cluster.get("vpcConfig", {})
    if is_false(vpc.get("endpointPublicAccess")):
        return None
    cidrs = as_list(vpc.get("publicAccessCidrs"))
    if vpc.get("publicAccessCidrs") == UNKNOWN:
        return None
    if not cidrs or any(is_world(c) for c in cidrs):
        return (
            "EKS API endpoint is public to 0.0.0.0/0 (endpointPublicAccess is not false and "
            "publicAccessCidrs "
            "is empty or world-open); set vpcConfig.endpointPublicAccess=false (stack config "
            "cluster.endpointPublicAccess: false), or list only your office/VPN CIDRs in publicAccessCidrs."
        )
    return None


def _gke_open(cluster: Resource) -> str | None:
    if is_true(cluster.get("privateClusterConfig.enablePrivateEndpoint")):
        return None
    networks = cluster.get("masterAuthorizedNetworksConfig")
    fix = (
        "set privateClusterConfig.enablePrivateEndpoint=true (stack config cluster.endpointPublicAccess: "
        "false), or list only trusted CIDRs in masterAuthorizedNetworksConfig.cidrBlocks."
    )
    if not isinstance(networks, dict):
        return f"GKE control plane is public and has no master authorized networks; {fix}"
    blocks = [b.get("cidrBlock") for b in as_list(networks.get("cidrBlocks")) if isinstance(b, dict)]
    if any(is_world(b) for b in blocks):
        return f"GKE master authorized networks include 0.0.0.0/0; {fix}"
    if is_true(networks.get("gcpPublicCidrsAccessEnabled")):
        return f"GKE control plane accepts every Google Cloud public IP (gcpPublicCidrsAccessEnabled); {fix}"
    return None


def _aks_open(cluster: Resource) -> str | None:
    profile = cluster.get("apiServerAccessProfile", {})
    if is_true(profile.get("enablePrivateCluster")):
        return None
    ranges = as_list(profile.get("authorizedIPRanges"))
    if profile.get("authorizedIPRanges") == UNKNOWN:
        return None
    if not ranges or any(is_world(r) for r in ranges):
        return (
            "AKS API server is public to 0.0.0.0/0 (no private cluster, authorizedIPRanges empty or "
            "world-open); "
            "set apiServerAccessProfile.enablePrivateCluster=true (stack config "
            "cluster.endpointPublicAccess: "
            "false), or list only trusted CIDRs in apiServerAccessProfile.authorizedIPRanges."
        )
    return None


def _open_apis(view: StackView) -> Iterator[Violation]:
    checks = {EKS_CLUSTER: _eks_open, GKE_CLUSTER: _gke_open, AKS_CLUSTER: _aks_open}
    for resource in view.resources:
        check = checks.get(resource.type)
        message = check(resource) if check else None
        if message:
            yield Violation(message, resource)


def kubernetes_api_not_public_in_prod(view: StackView) -> Iterator[Violation]:
    if view.environment == "prod":
        yield from _open_apis(view)


def kubernetes_api_restricted_in_dev(view: StackView) -> Iterator[Violation]:
    if view.environment != "prod":
        yield from _open_apis(view)


RULES = (
    ResourceRule(
        "gpu-pools-tainted",
        f"GPU node groups/pools (EKS, GKE, AKS) carry the {GPU_TAINT_KEY} NoSchedule taint.",
        "mandatory",
        gpu_pools_tainted,
    ),
    StackRule(
        "kubernetes-api-not-public-in-prod",
        "In prod stacks the Kubernetes API is private or limited to listed CIDRs, never 0.0.0.0/0.",
        "mandatory",
        kubernetes_api_not_public_in_prod,
    ),
    StackRule(
        "kubernetes-api-restricted-in-dev",
        "Dev stacks should also limit the Kubernetes API to known CIDRs.",
        "advisory",
        kubernetes_api_restricted_in_dev,
    ),
)
