"""Azure logging (azure/logging.py): AKS control-plane and blob data-access logs into one workspace."""

from __future__ import annotations

from infra.offline import Plan

SETTING = "azure-native:monitor:DiagnosticSetting"


def test_workspace_keeps_logs_for_the_configured_days(dev: Plan, prod: Plan) -> None:
    workspace = dev.one("azure-native:operationalinsights:Workspace").inputs
    assert workspace["sku"] == {"name": "PerGB2018"} and workspace["retentionInDays"] == 30
    assert workspace["resourceGroupName"] == "tf-dev-rg"
    assert dev.settings.azure is not None and dev.settings.azure.log_retention_days == 30
    assert prod.one("azure-native:operationalinsights:Workspace").inputs["retentionInDays"] == 30


def test_aks_control_plane_logs_go_to_the_workspace(dev: Plan) -> None:
    setting = dev.one(SETTING, "tf-dev-aks-diagnostics").inputs
    assert setting["resourceUri"].endswith("/Microsoft.ContainerService/managedClusters/tf-dev-aks")
    assert setting["workspaceId"].endswith("/Microsoft.OperationalInsights/workspaces/tf-dev-logs")
    assert {log["category"] for log in setting["logs"] if log["enabled"]} == {
        "kube-apiserver",
        "kube-audit-admin",
        "kube-controller-manager",
        "kube-scheduler",
        "cluster-autoscaler",
        "guard",
    }


def test_blob_reads_writes_and_deletes_are_logged_on_the_blob_service(dev: Plan) -> None:
    setting = dev.one(SETTING, "tf-dev-blob-diagnostics").inputs
    account = dev.one("azure-native:storage:StorageAccount").inputs["accountName"]
    assert setting["resourceUri"].endswith(f"/storageAccounts/{account}/blobServices/default")
    assert setting["workspaceId"].endswith("/Microsoft.OperationalInsights/workspaces/tf-dev-logs")
    assert {log["category"] for log in setting["logs"] if log["enabled"]} == {
        "StorageRead",
        "StorageWrite",
        "StorageDelete",
    }
