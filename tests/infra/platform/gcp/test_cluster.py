"""GCP cluster (gcp/cluster.py): private VPC-native GKE, the system and GPU pools, and no device plugin of
our own."""

from __future__ import annotations

import json

from infra.offline import Plan
from infra.platform.gcp.cluster import gke_kubeconfig
from tests.infra.platform.provisioned import provisioned


def _pool(plan: Plan, key: str) -> dict:
    return plan.one("gcp:container/nodePool:NodePool", f"{plan.settings.name}-{key}").inputs


def test_cluster_is_private_vpc_native_with_workload_identity(dev: Plan) -> None:
    gke = dev.one("gcp:container/cluster:Cluster").inputs
    assert gke["workloadIdentityConfig"] == {"workloadPool": "your-project-id.svc.id.goog"}
    assert gke["privateClusterConfig"]["enablePrivateNodes"] is True
    assert gke["ipAllocationPolicy"] == {
        "clusterSecondaryRangeName": "pods",
        "servicesSecondaryRangeName": "services",
    }
    assert gke["removeDefaultNodePool"] is True and gke["enableShieldedNodes"] is True
    assert gke["releaseChannel"] == {"channel": "REGULAR"} and gke["minMasterVersion"] == "1.36"
    assert gke["masterAuth"]["clientCertificateConfig"] == {"issueClientCertificate": False}


def test_zonal_dev_and_regional_prod(dev: Plan, prod: Plan) -> None:
    assert dev.one("gcp:container/cluster:Cluster").inputs["location"] == "us-central1-a"
    assert prod.one("gcp:container/cluster:Cluster").inputs["location"] == "europe-west4"
    assert "nodeLocations" not in _pool(dev, "gpu")
    assert len(_pool(prod, "gpu")["nodeLocations"]) == 3


def test_endpoint_public_to_allowed_cidrs_in_dev_and_private_in_prod(dev: Plan, prod: Plan) -> None:
    d = dev.one("gcp:container/cluster:Cluster").inputs
    assert d["privateClusterConfig"]["enablePrivateEndpoint"] is False
    assert [b["cidrBlock"] for b in d["masterAuthorizedNetworksConfig"]["cidrBlocks"]] == ["203.0.113.0/24"]
    p = prod.one("gcp:container/cluster:Cluster").inputs
    assert p["privateClusterConfig"]["enablePrivateEndpoint"] is True
    assert p["deletionProtection"] is True


def test_gpu_pool_machine_accelerator_driver_taint_scaling_and_spot(dev: Plan, prod: Plan) -> None:
    pool = _pool(dev, "gpu")
    node = pool["nodeConfig"]
    assert node["machineType"] == "g2-standard-8"
    assert node["guestAccelerators"] == [
        {"type": "nvidia-l4", "count": 1, "gpuDriverInstallationConfig": {"gpuDriverVersion": "DEFAULT"}}
    ]
    assert node["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert node["labels"] == {"tritonform.dev/pool": "gpu"}
    assert node["spot"] is True and node["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    assert pool["autoscaling"]["totalMinNodeCount"] == 0 and pool["autoscaling"]["totalMaxNodeCount"] == 2
    prod_node = _pool(prod, "gpu")["nodeConfig"]
    assert prod_node["spot"] is False and prod_node["guestAccelerators"][0]["count"] == 2


def test_system_pool_is_untainted_and_nodes_use_a_dedicated_service_account(dev: Plan) -> None:
    node = _pool(dev, "system")["nodeConfig"]
    assert "taints" not in node and node["machineType"] == "e2-standard-4"
    assert node["serviceAccount"] == "tf-dev-nodes@your-project-id.iam.gserviceaccount.com"
    roles = {r.inputs["role"] for r in dev.of_type("gcp:projects/iAMMember:IAMMember")}
    assert not any("storage" in role or "admin" in role or "editor" in role for role in roles)


def test_no_device_plugin_or_helm_release_on_gke(dev: Plan) -> None:
    charts = [r.inputs.get("chart", "") for r in dev.of_type("kubernetes:helm.sh/v3:Release")]
    assert not any("nvidia" in chart for chart in charts)
    pool = dev.one("gcp:container/nodePool:NodePool", "tf-dev-gpu").inputs
    assert pool["autoscaling"]["totalMaxNodeCount"] == 2  # pool autoscaling = cluster autoscaler on


def test_kubeconfig_uses_the_gke_auth_plugin_without_static_credentials() -> None:
    p = provisioned("gcp-dev")
    config = json.loads(p.value(p.platform.cluster.kubeconfig))
    assert config == json.loads(gke_kubeconfig("tf-dev-gke", "34.118.0.10", "Q0VSVElGSUNBVEU="))
    user = config["users"][0]["user"]
    assert user["exec"]["command"] == "gke-gcloud-auth-plugin" and set(user) == {"exec"}
    assert p.plan.one("pulumi:providers:kubernetes").inputs["kubeconfig"] == "[secret]"
