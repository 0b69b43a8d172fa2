"""Azure logging: a Log Analytics workspace that receives the AKS control-plane logs and the model blobs'
data-access logs. Azure keeps neither unless a diagnostic setting sends them somewhere."""

from __future__ import annotations

import pulumi
import pulumi_azure_native as azure

from infra.platform.azure.cluster import AzureCluster
from infra.platform.azure.provider import AzureContext
from infra.platform.azure.storage import AzureStorage

# AKS control-plane log categories ("Supported logs for Microsoft.ContainerService/managedClusters"):
# kube-audit-admin rather than kube-audit, which adds every get and list and costs far more.
AKS_LOG_CATEGORIES = (
    "kube-apiserver",
    "kube-audit-admin",
    "kube-controller-manager",
    "kube-scheduler",
    "cluster-autoscaler",
    "guard",
)
# Blob data access (table StorageBlobLogs): Azure Monitor takes these on the blob service, not the account.
BLOB_LOG_CATEGORIES = ("StorageRead", "StorageWrite", "StorageDelete")
DIAGNOSTIC_SETTING = "tritonform"


def build_logging(
    context: AzureContext,
    group: azure.resources.ResourceGroup,
    cluster: AzureCluster,
    storage: AzureStorage,
) -> azure.operationalinsights.Workspace:
    """The workspace (retention from `azure.logRetentionDays`) and the two diagnostic settings into it."""
    workspace = azure.operationalinsights.Workspace(
        context.name("logs"),
        resource_group_name=group.name,
        workspace_name=context.name("logs"),
        sku=azure.operationalinsights.WorkspaceSkuArgs(name="PerGB2018"),
        retention_in_days=context.azure.log_retention_days,
        tags=context.tags,
        opts=context.options,
    )
    azure.monitor.DiagnosticSetting(
        context.name("aks-diagnostics"),
        name=DIAGNOSTIC_SETTING,
        resource_uri=cluster.aks.id,
        workspace_id=workspace.id,
        # Resource-specific tables (AKSControlPlane, AKSAuditAdmin) rather than the shared AzureDiagnostics.
        log_analytics_destination_type="Dedicated",
        logs=_logs(AKS_LOG_CATEGORIES),
        opts=context.child(cluster.component),
    )
    azure.monitor.DiagnosticSetting(
        context.name("blob-diagnostics"),
        name=DIAGNOSTIC_SETTING,
        resource_uri=storage.account.id.apply(lambda account_id: f"{account_id}/blobServices/default"),
        workspace_id=workspace.id,
        logs=_logs(BLOB_LOG_CATEGORIES),
        opts=pulumi.ResourceOptions(parent=storage.component, depends_on=[storage.blob_service]),
    )
    return workspace


def _logs(categories: tuple[str, ...]) -> list[azure.monitor.DiagnosticsLogSettingsArgs]:
    return [
        azure.monitor.DiagnosticsLogSettingsArgs(category=category, enabled=True) for category in categories
    ]
