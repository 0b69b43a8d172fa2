"""What Azure would return for the resources and functions the Azure platform uses (offline plan)."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import yaml

from infra.settings import StackSettings

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
TENANT = "00000000-0000-0000-0000-00000000000a"
DEPLOYER_OBJECT_ID = "00000000-0000-0000-0000-0000000000de"
AUTONAME_SUFFIX = "a1b2c3d"
KUBELET_OBJECT_ID = "00000000-0000-0000-0000-0000000000cb"
# AKS's first-party Entra application ("Azure Kubernetes Service AAD Server"), as in a real kubeconfig.
AKS_SERVER_APP = "6dae42f8-4368-4678-94ff-3960e28e3630"

# type token -> (the input holding the resource's own name, its ARM id below the resource group)
_ARM: dict[str, tuple[str, str]] = {
    "azure-native:network:VirtualNetwork": (
        "virtualNetworkName",
        "Microsoft.Network/virtualNetworks/{virtualNetworkName}",
    ),
    "azure-native:network:Subnet": (
        "subnetName",
        "Microsoft.Network/virtualNetworks/{virtualNetworkName}/subnets/{subnetName}",
    ),
    "azure-native:containerservice:ManagedCluster": (
        "resourceName",
        "Microsoft.ContainerService/managedClusters/{resourceName}",
    ),
    "azure-native:containerservice:AgentPool": (
        "agentPoolName",
        "Microsoft.ContainerService/managedClusters/{resourceName}/agentPools/{agentPoolName}",
    ),
    "azure-native:storage:StorageAccount": ("accountName", "Microsoft.Storage/storageAccounts/{accountName}"),
    "azure-native:storage:BlobServiceProperties": (
        "blobServicesName",
        "Microsoft.Storage/storageAccounts/{accountName}/blobServices/{blobServicesName}",
    ),
    "azure-native:storage:ManagementPolicy": (
        "managementPolicyName",
        "Microsoft.Storage/storageAccounts/{accountName}/managementPolicies/{managementPolicyName}",
    ),
    "azure-native:storage:BlobContainer": (
        "containerName",
        "Microsoft.Storage/storageAccounts/{accountName}/blobServices/default/containers/{containerName}",
    ),
    "azure-native:managedidentity:UserAssignedIdentity": (
        "resourceName",
        "Microsoft.ManagedIdentity/userAssignedIdentities/{resourceName}",
    ),
    "azure-native:containerregistry:Registry": (
        "registryName",
        "Microsoft.ContainerRegistry/registries/{registryName}",
    ),
    "azure-native:network:NetworkSecurityGroup": (
        "networkSecurityGroupName",
        "Microsoft.Network/networkSecurityGroups/{networkSecurityGroupName}",
    ),
    "azure-native:network:PublicIPAddress": (
        "publicIpAddressName",
        "Microsoft.Network/publicIPAddresses/{publicIpAddressName}",
    ),
    "azure-native:apimanagement:ApiManagementService": (
        "serviceName",
        "Microsoft.ApiManagement/service/{serviceName}",
    ),
    "azure-native:apimanagement:Backend": (
        "backendId",
        "Microsoft.ApiManagement/service/{serviceName}/backends/{backendId}",
    ),
    "azure-native:apimanagement:Api": ("apiId", "Microsoft.ApiManagement/service/{serviceName}/apis/{apiId}"),
    "azure-native:apimanagement:ApiOperation": (
        "operationId",
        "Microsoft.ApiManagement/service/{serviceName}/apis/{apiId}/operations/{operationId}",
    ),
    "azure-native:apimanagement:ApiPolicy": (
        "policyId",
        "Microsoft.ApiManagement/service/{serviceName}/apis/{apiId}/policies/{policyId}",
    ),
    "azure-native:operationalinsights:Workspace": (
        "workspaceName",
        "Microsoft.OperationalInsights/workspaces/{workspaceName}",
    ),
    "azure-native:managedidentity:FederatedIdentityCredential": (
        "federatedIdentityCredentialResourceName",
        "Microsoft.ManagedIdentity/userAssignedIdentities/{resourceName}"
        "/federatedIdentityCredentials/{federatedIdentityCredentialResourceName}",
    ),
}


def _guid(seed: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, seed))


def azure_resource(
    typ: str, name: str, inputs: dict[str, Any], settings: StackSettings
) -> tuple[str, dict[str, Any]]:
    """The id and state an Azure create would return for `typ` with `inputs`."""
    state = dict(inputs)
    group = inputs.get("resourceGroupName", "")
    if typ == "azure-native:resources:ResourceGroup":
        state["name"] = group or f"{name}{AUTONAME_SUFFIX}"
        return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{state['name']}", state
    if typ == "azure-native:authorization:RoleAssignment":
        assignment = inputs.get("roleAssignmentName") or _guid(name)
        state["name"] = assignment
        resource_id = f"{inputs['scope']}/providers/Microsoft.Authorization/roleAssignments/{assignment}"
        return resource_id, state
    if typ == "azure-native:monitor:DiagnosticSetting":
        # An extension resource: its id hangs below the resource it watches.
        state["name"] = inputs.get("name") or name
        return (
            f"{inputs['resourceUri']}/providers/Microsoft.Insights/diagnosticSettings/{state['name']}",
            state,
        )
    if typ not in _ARM:
        return f"{name}-id", state
    name_key, template = _ARM[typ]
    names = {**inputs, name_key: inputs.get(name_key) or f"{name}{AUTONAME_SUFFIX}"}
    state["name"] = names[name_key]
    prefix = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/"
    resource_id = prefix + template.format(**names)
    if typ == "azure-native:containerservice:ManagedCluster":
        location = settings.region
        state["fqdn"] = f"{inputs.get('dnsPrefix', name)}-abcd1234.hcp.{location}.azmk8s.io"
        state["oidcIssuerProfile"] = {
            **(inputs.get("oidcIssuerProfile") or {}),
            "issuerURL": f"https://{location}.oic.prod-aks.azure.com/{TENANT}/{_guid(resource_id)}/",
        }
        state["identity"] = {
            **(inputs.get("identity") or {}),
            "tenantId": TENANT,
            "principalId": _guid(resource_id + "/identity"),
        }
        state["identityProfile"] = {
            "kubeletidentity": {
                "clientId": _guid(resource_id + "/kubelet-client"),
                "objectId": KUBELET_OBJECT_ID,
                "resourceId": f"{resource_id}-agentpool",
            }
        }
    elif typ == "azure-native:containerregistry:Registry":
        state["loginServer"] = f"{state['name']}.azurecr.io"
    elif typ == "azure-native:apimanagement:ApiManagementService":
        state["gatewayUrl"] = f"https://{state['name']}.azure-api.net"
    elif typ == "azure-native:managedidentity:UserAssignedIdentity":
        state.update(
            clientId=_guid(resource_id + "/client"),
            principalId=_guid(resource_id + "/principal"),
            tenantId=TENANT,
        )
    elif typ == "azure-native:storage:StorageAccount":
        state["primaryEndpoints"] = {"blob": f"https://{state['name']}.blob.core.windows.net/"}
    elif typ == "azure-native:operationalinsights:Workspace":
        state["customerId"] = _guid(resource_id + "/customer")
    identity = state.get("identity")
    if isinstance(identity, dict) and isinstance(identity.get("userAssignedIdentities"), list):
        # Inputs list the identity ids; Azure answers with a map of id -> principal and client ids.
        state["identity"] = {
            **identity,
            "userAssignedIdentities": {
                i: {"principalId": _guid(i + "/principal"), "clientId": _guid(i + "/client")}
                for i in identity["userAssignedIdentities"]
            },
        }
    return resource_id, state


def _user_kubeconfig(cluster: str, region: str) -> str:
    """A kubeconfig shaped like the one AKS returns with Entra ID on and `format=exec` (base64 YAML)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {
                    "server": f"https://{cluster}-abcd1234.hcp.{region}.azmk8s.io:443",
                    "certificate-authority-data": "Q0VSVElGSUNBVEU=",
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": f"clusterUser_{cluster}"}}],
        "current-context": cluster,
        "users": [
            {
                "name": f"clusterUser_{cluster}",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": "kubelogin",
                        "args": [
                            "get-token",
                            "--environment",
                            "AzurePublicCloud",
                            "--server-id",
                            AKS_SERVER_APP,
                            "--tenant-id",
                            TENANT,
                            "--login",
                            "devicecode",
                        ],
                    }
                },
            }
        ],
    }
    return base64.b64encode(yaml.safe_dump(config).encode()).decode()


def azure_call(token: str, args: dict[str, Any], settings: StackSettings) -> dict[str, Any] | None:
    """The result of an Azure provider function, or None when this module does not know it."""
    if token == "azure-native:authorization:getClientConfig":
        return {
            "clientId": _guid("deployer-client"),
            "objectId": DEPLOYER_OBJECT_ID,
            "subscriptionId": SUBSCRIPTION,
            "tenantId": TENANT,
        }
    if token == "azure-native:authorization:getClientToken":
        return {"token": "offline-arm-access-token"}
    if token == "azure-native:containerservice:listManagedClusterUserCredentials":
        cluster = args.get("resourceName", "cluster")
        return {"kubeconfigs": [{"name": "clusterUser", "value": _user_kubeconfig(cluster, settings.region)}]}
    return None
