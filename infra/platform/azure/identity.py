"""Azure reader identity (Workload Identity): a user-assigned identity that only Triton's Kubernetes service
account may federate with, reading only the model container."""

from __future__ import annotations

import pulumi_azure_native as azure

from infra.platform.azure.cluster import AzureCluster
from infra.platform.azure.provider import AzureContext
from infra.platform.azure.storage import AzureStorage
from infra.platform.base import ReaderIdentity, ServiceAccountRef

STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"  # built-in role definition id
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"


def build_reader(
    context: AzureContext,
    group: azure.resources.ResourceGroup,
    cluster: AzureCluster,
    storage: AzureStorage,
    service_account: ServiceAccountRef,
) -> ReaderIdentity:
    """The identity, its federated credential for `service_account`, and a container-scoped read role."""
    component = ReaderIdentity(context.name("model-reader"), context.options)
    child = context.child(component)
    identity = azure.managedidentity.UserAssignedIdentity(
        context.name("model-reader"), resource_group_name=group.name, tags=context.tags, opts=child
    )
    # Only tokens AKS issues to Triton's service account may be exchanged for this identity.
    azure.managedidentity.FederatedIdentityCredential(
        context.name("model-reader"),
        resource_group_name=group.name,
        resource_name_=identity.name,
        issuer=cluster.component.oidc_issuer_url,
        subject=service_account.subject,
        audiences=[FEDERATED_AUDIENCE],
        opts=child,
    )
    # Read-only, and on the model container only (not the account, group or subscription).
    azure.authorization.RoleAssignment(
        context.name("model-reader"),
        principal_id=identity.principal_id,
        principal_type="ServicePrincipal",
        role_definition_id=context.role(STORAGE_BLOB_DATA_READER),
        scope=storage.container.id,
        description=f"Read the model repository for {service_account.subject}",
        opts=child,
    )
    component.finish(
        identity_id=identity.client_id,
        service_account_annotations={"azure.workload.identity/client-id": identity.client_id},
        # The workload identity webhook injects AZURE_CLIENT_ID/TENANT_ID/FEDERATED_TOKEN_FILE into
        # pods with this label.
        pod_labels={"azure.workload.identity/use": "true"},
        # Triton reads as:// with an account key unless told otherwise. AZURE_STORAGE_AUTH_TYPE comes
        # from triton-inference-server server PR #8652 / core PR #468 (merged 2026-02-11), so the
        # Triton image must be a release that contains it (26.03 or later; which one first shipped it
        # is unconfirmed). "default" (DefaultAzureCredential) is the mode that reads the federated
        # token; "managed_identity" only asks the node's IMDS, which is not Workload Identity.
        env={"AZURE_STORAGE_ACCOUNT": storage.account.name, "AZURE_STORAGE_AUTH_TYPE": "default"},
    )
    return component
