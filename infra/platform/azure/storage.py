"""Azure model bucket: a storage account without shared keys or public access, and its private container."""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

import pulumi
import pulumi_azure_native as azure

from infra.platform.base import ModelBucket

if TYPE_CHECKING:
    from pulumi_azure_native.storage import EncryptionArgs, IdentityArgs

    from infra.platform.azure import AzurePlatform

KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
MODEL_CONTAINER = "models"
KEY_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.KeyVault/vaults/(?P<vault>[^/]+)"
    r"/keys/(?P<key>[^/]+)$",
    re.IGNORECASE,
)


def storage_account_name(prefix: str, resource_group: str, region: str) -> str:
    """A storage account name (3-24 lowercase letters and digits, globally unique), stable per stack."""
    digest = hashlib.sha256(f"{prefix}/{resource_group}/{region}".encode()).hexdigest()[:8]
    return f"{re.sub(r'[^a-z0-9]', '', prefix)[:10]}models{digest}"


def model_storage(
    cloud: AzurePlatform, group: azure.resources.ResourceGroup, opts: pulumi.ResourceOptions
) -> tuple[ModelBucket, azure.storage.StorageAccount, azure.storage.BlobContainer]:
    """The model bucket: a locked-down storage account and its private container."""
    s, b = cloud.settings, cloud.settings.bucket
    component = ModelBucket(cloud.name("models"), opts)
    child = cloud.child(component)
    account_name = storage_account_name(s.name, cloud.azure.resource_group or cloud.name("rg"), s.region)
    identity, encryption, depends = _storage_encryption(cloud, group, component, b.kms_key)
    account = azure.storage.StorageAccount(
        cloud.name("models"),
        resource_group_name=group.name,
        account_name=account_name,
        kind="StorageV2",
        sku=azure.storage.SkuArgs(name="Standard_ZRS" if s.environment == "prod" else "Standard_LRS"),
        allow_blob_public_access=False,
        allow_shared_key_access=False,  # no account keys exist for anyone to hand out
        default_to_o_auth_authentication=True,
        minimum_tls_version="TLS1_2",
        enable_https_traffic_only=True,
        allow_cross_tenant_replication=False,
        identity=identity,
        encryption=encryption,
        tags=cloud.tags,
        opts=pulumi.ResourceOptions(parent=component, depends_on=depends),
    )
    azure.storage.BlobServiceProperties(
        cloud.name("models"),
        resource_group_name=group.name,
        account_name=account.name,
        blob_services_name="default",
        is_versioning_enabled=True,
        delete_retention_policy=azure.storage.DeleteRetentionPolicyArgs(enabled=True, days=7),
        container_delete_retention_policy=azure.storage.DeleteRetentionPolicyArgs(enabled=True, days=7),
        opts=child,
    )
    azure.storage.ManagementPolicy(
        cloud.name("models"),
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
                                    days_after_creation_greater_than=b.noncurrent_version_days
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
        cloud.name("models"),
        resource_group_name=group.name,
        account_name=account.name,
        container_name=MODEL_CONTAINER,
        public_access=azure.storage.PublicAccess.NONE,
        opts=child,
    )
    uri = pulumi.Output.all(account.name, container.name).apply(lambda a: f"as://{a[0]}/{a[1]}")
    component.finish(bucket_name=container.name, uri=uri)
    return component, account, container


def _storage_encryption(
    cloud: AzurePlatform, group: azure.resources.ResourceGroup, parent: pulumi.Resource, kms_key: str | None
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
        cloud.name("models-cmk"),
        resource_group_name=group.name,
        tags=cloud.tags,
        opts=cloud.child(parent),
    )
    grant = azure.authorization.RoleAssignment(
        cloud.name("models-cmk"),
        principal_id=key_identity.principal_id,
        principal_type="ServicePrincipal",
        role_definition_id=cloud.role(KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER),
        scope=kms_key,
        opts=cloud.child(parent),
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
