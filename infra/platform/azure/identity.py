"""Azure reader identities (Workload Identity): a user-assigned identity that only one Kubernetes service
account may federate with, reading the model container, narrowed by a condition on the blob path."""

from __future__ import annotations

import pulumi
import pulumi_azure_native as azure

from infra.platform.azure.cluster import AzureCluster
from infra.platform.azure.provider import AzureContext
from infra.platform.azure.storage import AzureStorage
from infra.platform.base import (
    TRAINER_READ_PREFIX,
    TRAINER_WRITE_PREFIX,
    ReaderIdentity,
    ReadScope,
    ServiceAccountRef,
    TrainerIdentity,
)

STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"  # built-in role definition id
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
TRITON_READER = "model-reader"  # Triton's identity, credential and role assignment share this name
GATEWAY_READER = "gateway-reader"
BLOB_READ = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"
BLOB_PATH = "@Resource[Microsoft.Storage/storageAccounts/blobServices/containers/blobs:path]"
CONDITION_VERSION = "2.0"


def blob_path_condition(scope: ReadScope) -> str:
    """The role assignment condition (ABAC, version 2.0) that admits reads of the blobs `scope` names only.

    The blob path is the blob's name inside the container. Listing is the same data action without a path,
    so the condition cannot hold for it and listing is refused too.
    """
    patterns = [f"{scope.prefix}*{suffix}" for suffix in scope.suffixes] or [f"{scope.prefix}*"]
    matches = "\n    OR\n    ".join(f"{BLOB_PATH} StringLike '{pattern}'" for pattern in patterns)
    return f"(\n  (\n    !(ActionMatches{{'{BLOB_READ}'}})\n  )\n  OR\n  (\n    {matches}\n  )\n)"


def build_reader(
    context: AzureContext,
    group: azure.resources.ResourceGroup,
    cluster: AzureCluster,
    storage: AzureStorage,
    service_account: ServiceAccountRef,
    scope: ReadScope,
    key: str = TRITON_READER,
) -> ReaderIdentity:
    """The identity, its federated credential for `service_account`, and a read role on the model container
    with a blob-path condition unless `scope` is the whole container."""
    component = ReaderIdentity(context.name(key), context.options)
    child = context.child(component)
    identity = _federated_identity(context, group, cluster, service_account, key, child)
    narrowed = bool(scope.prefix or scope.suffixes)
    # Read-only, and on the model container only (not the account, group or subscription).
    azure.authorization.RoleAssignment(
        context.name(key),
        principal_id=identity.principal_id,
        principal_type="ServicePrincipal",
        role_definition_id=context.role(STORAGE_BLOB_DATA_READER),
        scope=storage.container.id,
        condition=blob_path_condition(scope) if narrowed else None,
        condition_version=CONDITION_VERSION if narrowed else None,
        description=f"Read the model repository for {service_account.subject}",
        opts=child,
    )
    component.finish(
        identity_id=identity.client_id,
        service_account_annotations={"azure.workload.identity/client-id": identity.client_id},
        # The workload identity webhook injects AZURE_CLIENT_ID/TENANT_ID/FEDERATED_TOKEN_FILE into
        # pods with this label.
        pod_labels={"azure.workload.identity/use": "true"},
        # Triton reads as:// with an account key unless told otherwise; AZURE_STORAGE_AUTH_TYPE is read from
        # NGC release 26.05 on (triton-inference-server/core r26.05; settings refuse older releases on
        # Azure). "default" (DefaultAzureCredential) is the mode that reads the federated token;
        # "managed_identity" only asks the node's IMDS, which is not Workload Identity.
        env={"AZURE_STORAGE_ACCOUNT": storage.account.name, "AZURE_STORAGE_AUTH_TYPE": "default"},
    )
    return component


TRAINER = "trainer"
BLOB_WRITE_ACTIONS = (
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action",
)


def trainer_condition() -> str:
    """ABAC (2.0): reads only under `datasets/` and `checkpoints/`, writes only under `checkpoints/`."""
    read = (
        f"{BLOB_PATH} StringLike '{TRAINER_READ_PREFIX}*' OR {BLOB_PATH} StringLike '{TRAINER_WRITE_PREFIX}*'"
    )
    writes = " OR ".join(f"ActionMatches{{'{action}'}}" for action in BLOB_WRITE_ACTIONS)
    return (
        f"(\n  (\n    !(ActionMatches{{'{BLOB_READ}'}})\n  )\n  OR\n  (\n    {read}\n  )\n)\nAND\n"
        f"(\n  (\n    !({writes})\n  )\n  OR\n  (\n    "
        f"{BLOB_PATH} StringLike '{TRAINER_WRITE_PREFIX}*'\n  )\n)"
    )


def build_trainer(
    context: AzureContext,
    group: azure.resources.ResourceGroup,
    cluster: AzureCluster,
    storage: AzureStorage,
    service_account: ServiceAccountRef,
) -> TrainerIdentity:
    """The training Jobs' identity: a custom role holding only blob read/write data actions (no delete, no
    container or account actions), assigned on the model container with a condition on the blob path."""
    component = TrainerIdentity(context.name(TRAINER), context.options)
    child = context.child(component)
    identity = _federated_identity(context, group, cluster, service_account, TRAINER, child)
    role = azure.authorization.RoleDefinition(
        context.name(TRAINER),
        role_name=context.name("model-trainer"),
        description="Read datasets/ and write checkpoints/ blobs of the model container",
        scope=storage.container.id,
        assignable_scopes=[storage.container.id],
        permissions=[azure.authorization.PermissionArgs(data_actions=[BLOB_READ, *BLOB_WRITE_ACTIONS])],
        opts=child,
    )
    azure.authorization.RoleAssignment(
        context.name(TRAINER),
        principal_id=identity.principal_id,
        principal_type="ServicePrincipal",
        role_definition_id=role.id,
        scope=storage.container.id,
        condition=trainer_condition(),
        condition_version=CONDITION_VERSION,
        description=f"Train from datasets/ into checkpoints/ for {service_account.subject}",
        opts=child,
    )
    component.finish(
        identity_id=identity.client_id,
        service_account_annotations={"azure.workload.identity/client-id": identity.client_id},
        pod_labels={"azure.workload.identity/use": "true"},
        env={"AZURE_STORAGE_ACCOUNT": storage.account.name},
    )
    return component


def _federated_identity(
    context: AzureContext,
    group: azure.resources.ResourceGroup,
    cluster: AzureCluster,
    service_account: ServiceAccountRef,
    key: str,
    opts: pulumi.ResourceOptions,
) -> azure.managedidentity.UserAssignedIdentity:
    """A user-assigned identity that only tokens AKS issues to `service_account` may be exchanged for."""
    identity = azure.managedidentity.UserAssignedIdentity(
        context.name(key), resource_group_name=group.name, tags=context.tags, opts=opts
    )
    azure.managedidentity.FederatedIdentityCredential(
        context.name(key),
        resource_group_name=group.name,
        resource_name_=identity.name,
        issuer=cluster.component.oidc_issuer_url,
        subject=service_account.subject,
        audiences=[FEDERATED_AUDIENCE],
        opts=opts,
    )
    return identity
