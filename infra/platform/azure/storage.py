"""Azure model bucket: a storage account without shared keys or public access, and its private container."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pulumi
import pulumi_azure_native as azure

from infra.platform.azure.provider import KEY_ID, AzureContext
from infra.platform.base import ModelBucket

if TYPE_CHECKING:
    from pulumi_azure_native.storage import EncryptionArgs, IdentityArgs

KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
MODEL_CONTAINER = "models"


@dataclass(frozen=True)
class AzureStorage:
    """The neutral model bucket, the storage account (Triton's env names it) and the container the reader
    is granted on."""

    component: ModelBucket
    account: azure.storage.StorageAccount
    container: azure.storage.BlobContainer
    blob_service: azure.storage.BlobServiceProperties


def storage_account_name(prefix: str, resource_group: str, region: str) -> str:
    """A storage account name (3-24 lowercase letters and digits, globally unique), stable per stack."""
    digest = hashlib.sha256(f"{prefix}/{resource_group}/{region}".encode()).hexdigest()[:8]
    return f"{re.sub(r'[^a-z0-9]', '', prefix)[:10]}models{digest}"


def build_bucket(context: AzureContext, group: azure.resources.ResourceGroup) -> AzureStorage:
    """The model bucket: a locked-down storage account and its private container."""
    settings = context.settings
    component = ModelBucket(context.name("models"), context.options)
    child = context.child(component)
    account_name = storage_account_name(settings.name, context.resource_group_name, settings.region)
    identity, encryption, depends = _storage_encryption(context, group, component, settings.bucket.kms_key)
    account = azure.storage.StorageAccount(
        context.name("models"),
        resource_group_name=group.name,
        account_name=account_name,
        kind="StorageV2",
        sku=azure.storage.SkuArgs(name="Standard_ZRS" if settings.environment == "prod" else "Standard_LRS"),
        allow_blob_public_access=False,
        allow_shared_key_access=False,  # no account keys exist for anyone to hand out
        default_to_o_auth_authentication=True,
        minimum_tls_version="TLS1_2",
        enable_https_traffic_only=True,
        allow_cross_tenant_replication=False,
        identity=identity,
        encryption=encryption,
        tags=context.tags,
        opts=pulumi.ResourceOptions(parent=component, depends_on=depends),
    )
    blob_service = azure.storage.BlobServiceProperties(
        context.name("models"),
        resource_group_name=group.name,
        account_name=account.name,
        blob_services_name="default",
        is_versioning_enabled=True,
        delete_retention_policy=azure.storage.DeleteRetentionPolicyArgs(enabled=True, days=7),
        container_delete_retention_policy=azure.storage.DeleteRetentionPolicyArgs(enabled=True, days=7),
        opts=child,
    )
    azure.storage.ManagementPolicy(
        context.name("models"),
        resource_group_name=group.name,
        account_name=account.name,
        management_policy_name="default",
        policy=azure.storage.ManagementPolicySchemaArgs(
            rules=[
                azure.storage.ManagementPolicyRuleArgs(
                    name="expire-old-model-versions",
                    type="Lifecycle",
                    enabled=True,
                    definition=azure.storage.ManagementPolicyDefinitionArgs(
                        filters=azure.storage.ManagementPolicyFilterArgs(blob_types=["blockBlob"]),
                        actions=azure.storage.ManagementPolicyActionArgs(
                            version=azure.storage.ManagementPolicyVersionArgs(
                                delete=azure.storage.DateAfterCreationArgs(
                                    days_after_creation_greater_than=settings.bucket.noncurrent_version_days
                                )
                            )
                        ),
                    ),
                )
            ]
        ),
        opts=child,
    )
    container = azure.storage.BlobContainer(
        context.name("models"),
        resource_group_name=group.name,
        account_name=account.name,
        container_name=MODEL_CONTAINER,
        public_access=azure.storage.PublicAccess.NONE,
        opts=child,
    )
    uri = pulumi.Output.all(account.name, container.name).apply(lambda names: f"as://{names[0]}/{names[1]}")
    component.finish(bucket_name=container.name, uri=uri)
    return AzureStorage(component, account, container, blob_service)


def _storage_encryption(
    context: AzureContext, group: azure.resources.ResourceGroup, parent: pulumi.Resource, kms_key: str | None
) -> tuple[IdentityArgs | None, EncryptionArgs, list[pulumi.Resource]]:
    """Infrastructure (double) encryption always; a customer-managed Key Vault key when configured."""
    service = azure.storage.EncryptionServiceArgs(enabled=True, key_type="Account")
    services = azure.storage.EncryptionServicesArgs(blob=service, file=service)
    match = KEY_ID.match(kms_key) if kms_key else None
    if kms_key is None or match is None:
        return (
            None,
            azure.storage.EncryptionArgs(
                key_source="Microsoft.Storage", require_infrastructure_encryption=True, services=services
            ),
            [],
        )
    # CMK: a dedicated identity that may use the key (the vault must use Azure RBAC and purge protection).
    key_identity = azure.managedidentity.UserAssignedIdentity(
        context.name("models-cmk"),
        resource_group_name=group.name,
        tags=context.tags,
        opts=context.child(parent),
    )
    grant = azure.authorization.RoleAssignment(
        context.name("models-cmk"),
        principal_id=key_identity.principal_id,
        principal_type="ServicePrincipal",
        role_definition_id=context.role(KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER),
        scope=kms_key,
        opts=context.child(parent),
    )
    return (
        azure.storage.IdentityArgs(type="UserAssigned", user_assigned_identities=[key_identity.id]),
        azure.storage.EncryptionArgs(
            key_source="Microsoft.Keyvault",
            require_infrastructure_encryption=True,
            services=services,
            key_vault_properties=azure.storage.KeyVaultPropertiesArgs(
                key_name=match["key"], key_vault_uri=f"https://{match['vault']}.vault.azure.net"
            ),
            encryption_identity=azure.storage.EncryptionIdentityArgs(
                encryption_user_assigned_identity=key_identity.id
            ),
        ),
        [grant],
    )
