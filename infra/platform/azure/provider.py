"""Azure provider: the stack's region on every resource, the account that deploys, and the context helpers
take."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure
from pulumi_azure_native.authorization.get_client_config import GetClientConfigResult

from infra.platform.base import CloudContext
from infra.settings import AzureSettings, SettingsError, StackSettings

# A Key Vault key's resource id: the format `bucket.kmsKey` must have on Azure.
KEY_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.KeyVault/vaults/(?P<vault>[^/]+)"
    r"/keys/(?P<key>[^/]+)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class AzureContext(CloudContext):
    """The context of an Azure stack: also its `azure:` settings block and whoever runs the deployment."""

    azure: AzureSettings
    # Tenant, subscription and object id of the deploying principal (one invoke per stack).
    deployer: pulumi.Output[GetClientConfigResult]

    @property
    def resource_group_name(self) -> str:
        """The resource group the stack creates: `azure.resourceGroup`, else `<name>-rg`."""
        return self.azure.resource_group or self.name("rg")

    def role(self, role_id: str) -> pulumi.Output[str]:
        """The full id of a built-in role definition in the stack's subscription."""
        return self.deployer.subscription_id.apply(
            lambda subscription: (
                f"/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"
            )
        )


def cloud_context(settings: StackSettings) -> AzureContext:
    """Check the Azure-only settings, then create the stack's explicit provider and look up the deployer."""
    azure_settings = settings.azure or AzureSettings()
    network = ipaddress.ip_network(settings.network.cidr)
    for key, value in (("podCidr", azure_settings.pod_cidr), ("serviceCidr", azure_settings.service_cidr)):
        if ipaddress.ip_network(value).overlaps(network):
            problem = f"tritonform:azure.{key}: {value} overlaps network.cidr {settings.network.cidr}"
            raise SettingsError([problem + "; pick a range outside the VNet"])
    kms_key = settings.bucket.kms_key
    if kms_key is not None and not KEY_ID.match(kms_key):
        raise SettingsError(
            [
                f"tritonform:bucket.kmsKey: {kms_key!r} is not a Key Vault key resource id; use "
                "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.KeyVault/vaults/VAULT/keys/KEY"
            ]
        )
    provider = azure.Provider("azure-native", location=settings.region)
    deployer = azure.authorization.get_client_config_output(opts=pulumi.InvokeOptions(provider=provider))
    options = pulumi.ResourceOptions(providers={"azure-native": provider})
    return AzureContext(settings, options, settings.resource_tags, azure_settings, deployer)
