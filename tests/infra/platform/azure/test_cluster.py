"""Azure cluster (azure/cluster.py): AKS with Entra ID and Workload Identity, the system and GPU pools, and a
kubeconfig that logs in through the Azure CLI."""

from __future__ import annotations

import base64

import yaml

from infra.offline import Plan
from infra.offline.mocks.azure import _user_kubeconfig
from infra.platform.azure.cluster import aks_kubeconfig_for_azure_cli
from tests.infra.platform.provisioned import provisioned


def _aks(plan: Plan) -> dict:
    return plan.one("azure-native:containerservice:ManagedCluster").inputs


def test_aks_version_identity_oidc_workload_identity_and_overlay(dev: Plan) -> None:
    aks = _aks(dev)
    assert aks["kubernetesVersion"] == "1.36" and aks["identity"] == {"type": "SystemAssigned"}
    assert aks["oidcIssuerProfile"] == {"enabled": True}
    assert aks["securityProfile"]["workloadIdentity"] == {"enabled": True}
    net = aks["networkProfile"]
    assert (net["networkPlugin"], net["networkPluginMode"]) == ("azure", "overlay")
    assert net["dnsServiceIP"] == "172.16.0.10"


def test_local_accounts_off_and_entra_rbac_on(dev: Plan, prod: Plan) -> None:
    aks = _aks(dev)
    assert aks["disableLocalAccounts"] is True
    assert aks["aadProfile"]["managed"] is True and aks["aadProfile"]["enableAzureRBAC"] is True
    assert _aks(prod)["aadProfile"]["adminGroupObjectIDs"] == ["11111111-2222-3333-4444-555555555555"]
    deployer = [r for r in dev.of_type("azure-native:authorization:RoleAssignment") if "deployer" in r.name]
    assert deployer[0].inputs["scope"].endswith("/managedClusters/tf-dev-aks")


def test_api_authorized_ranges_in_dev_and_private_cluster_in_prod(dev: Plan, prod: Plan) -> None:
    assert _aks(dev)["apiServerAccessProfile"] == {
        "enablePrivateCluster": False,
        "authorizedIPRanges": ["203.0.113.0/24"],
    }
    assert _aks(prod)["apiServerAccessProfile"]["enablePrivateCluster"] is True


def test_system_pool_is_inline_untainted_and_autoscaled(dev: Plan) -> None:
    (system,) = _aks(dev)["agentPoolProfiles"]
    assert system["mode"] == "System" and system["vmSize"] == "Standard_D4s_v5"
    assert "nodeTaints" not in system and system["enableAutoScaling"] is True
    assert (system["minCount"], system["maxCount"]) == (1, 3)


def test_gpu_pool_vm_size_taint_labels_scaling_spot_and_driver(dev: Plan, prod: Plan) -> None:
    pool = dev.one("azure-native:containerservice:AgentPool").inputs
    assert pool["vmSize"] == "Standard_NC4as_T4_v3" and pool["mode"] == "User"
    assert "nvidia.com/gpu=present:NoSchedule" in pool["nodeTaints"]
    assert pool["nodeLabels"] == {"tritonform.dev/pool": "gpu", "accelerator": "nvidia"}
    assert (pool["enableAutoScaling"], pool["minCount"], pool["maxCount"]) == (True, 0, 2)
    assert (pool["scaleSetPriority"], pool["scaleSetEvictionPolicy"], pool["spotMaxPrice"]) == (
        "Spot",
        "Delete",
        -1,
    )
    assert pool["gpuProfile"] == {"driver": "Install"}
    on_demand = prod.one("azure-native:containerservice:AgentPool").inputs
    assert on_demand["scaleSetPriority"] == "Regular" and "scaleSetEvictionPolicy" not in on_demand
    assert on_demand["nodeTaints"] == ["nvidia.com/gpu=present:NoSchedule"]


def test_spot_pool_tolerations_cover_the_spot_taint(dev: Plan, prod: Plan) -> None:
    keys = {t["key"] for t in dev.outputs["gpu_tolerations"]}
    assert keys == {"nvidia.com/gpu", "kubernetes.azure.com/scalesetpriority"}
    assert [t["key"] for t in prod.outputs["gpu_tolerations"]] == ["nvidia.com/gpu"]


def test_kubeconfig_logs_in_through_azure_cli_without_keys() -> None:
    p = provisioned("azure-dev")
    config = yaml.safe_load(p.value(p.platform.cluster.kubeconfig))
    exec_spec = config["users"][0]["user"]["exec"]
    assert exec_spec["command"] == "kubelogin" and set(config["users"][0]["user"]) == {"exec"}
    assert exec_spec["args"][exec_spec["args"].index("--login") + 1] == "azurecli"


def test_kubeconfig_rewrite_adds_login_mode_when_missing() -> None:
    config = yaml.safe_load(base64.b64decode(_user_kubeconfig("c", "westeurope")))
    config["users"][0]["user"]["exec"]["args"] = ["get-token"]
    encoded = base64.b64encode(yaml.safe_dump(config).encode()).decode()
    args = yaml.safe_load(aks_kubeconfig_for_azure_cli(encoded))["users"][0]["user"]["exec"]["args"]
    assert args == ["get-token", "--login", "azurecli"]
