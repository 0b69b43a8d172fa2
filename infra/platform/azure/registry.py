"""Azure Container Registry: private, no admin user, the kubelet pulls with its identity, and images are
pushed with the deployer's own Entra ID login; no registry credential is created or kept.

Why not the admin user (`listRegistryCredentials`): a registry-wide, never-expiring password. Why not a
scope-mapped token: ARM creates it without a password, which only the registry's `generateCredentials`
action makes (not in pulumi-azure-native: pulumi/pulumi-azure-native#3099), so it took a Python dynamic
provider, and Pulumi starts dynamic providers in the program's directory (`infra/`), where Pulumi.yaml's
relative `virtualenv: .venv` points at no environment (pulumi/pulumi#7061): the provider never started.
Instead, the deployer's ARM token (a provider function) is exchanged at the registry's documented
`/oauth2/exchange` endpoint for an ACR refresh token, as `az acr login` does: valid for about three
hours, scoped to what the deployer may do on this registry (AcrPush, granted below).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import urllib.parse
import urllib.request
from typing import Any

import pulumi
import pulumi_azure_native as azure
from pulumi.runtime.mocks import MockMonitor

from infra.platform.azure.cluster import AzureCluster
from infra.platform.azure.provider import AzureContext
from infra.platform.base import IMAGE_NAMES, ContainerRegistry

ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538f"  # built-in role definition id: AcrPull
ACR_PUSH = "8311e382-0749-4cb8-b61a-304f252e45ec"  # built-in role definition id: AcrPush
# The user name docker takes with an ACR refresh token as password (`az acr login --expose-token`).
REFRESH_TOKEN_USER = "00000000-0000-0000-0000-000000000000"
EXCHANGE_TIMEOUT_SECONDS = 30


def registry_name(prefix: str, resource_group: str, region: str) -> str:
    """An ACR name (5-50 letters and digits, globally unique), stable per stack."""
    digest = hashlib.sha256(f"acr/{prefix}/{resource_group}/{region}".encode()).hexdigest()[:8]
    return f"{re.sub(r'[^a-z0-9]', '', prefix)[:20]}images{digest}"


def exchange_for_refresh_token(exchange_url: str, login_server: str, tenant_id: str, arm_token: str) -> str:
    """Trade an Entra ID access token for an ACR refresh token (POST `<registry>/oauth2/exchange`)."""
    form = {
        "grant_type": "access_token",
        "service": login_server,
        "tenant": tenant_id,
        "access_token": arm_token,
    }
    request = urllib.request.Request(
        exchange_url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=EXCHANGE_TIMEOUT_SECONDS) as response:
        answer: dict[str, Any] = json.loads(response.read())
    token = answer.get("refresh_token")
    if not isinstance(token, str) or not token:
        raise RuntimeError(
            f"{exchange_url} answered without a refresh_token; is AcrPush granted to the deployer?"
        )
    return token


def push_password(
    login_server: pulumi.Input[str], tenant_id: pulumi.Input[str], arm_token: pulumi.Input[str]
) -> pulumi.Output[str]:
    """The ACR refresh token of whoever runs Pulumi, fetched while Pulumi applies changes.

    A preview pushes nothing and must not call out, and the offline plan (Pulumi's mocks) cannot: there
    the password stays unknown, as any value a provider has not returned yet.
    """

    def exchange(args: list[str]) -> Any:
        server, tenant, token = args
        if pulumi.runtime.is_dry_run() or isinstance(pulumi.runtime.settings.get_monitor(), MockMonitor):
            return pulumi.output.UNKNOWN
        url = f"https://{server}/oauth2/exchange"
        return asyncio.to_thread(exchange_for_refresh_token, url, server, tenant, token)

    password: pulumi.Output[str] = pulumi.Output.all(login_server, tenant_id, arm_token).apply(exchange)
    return pulumi.Output.secret(password)


def build_registry(
    context: AzureContext, group: azure.resources.ResourceGroup, cluster: AzureCluster
) -> ContainerRegistry:
    """ACR, AcrPull for the AKS kubelet identity, AcrPush for the deployer, and the deployer's push login."""
    settings = context.settings
    component = ContainerRegistry(context.name("registry"), context.options)
    child = context.child(component)
    kubelet_object_id = cluster.aks.identity_profile.apply(
        lambda profile: str(profile["kubeletidentity"].object_id) if profile else ""
    )
    registry = azure.containerregistry.Registry(
        context.name("registry"),
        resource_group_name=group.name,
        registry_name=registry_name(settings.name, context.resource_group_name, settings.region),
        # Premium adds zone redundancy and private endpoints for prod; Standard is enough for dev.
        sku=azure.containerregistry.SkuArgs(name="Premium" if settings.environment == "prod" else "Standard"),
        admin_user_enabled=False,
        anonymous_pull_enabled=False,
        # Pushed from wherever `pulumi up` runs, so the registry keeps a public endpoint; every access
        # still needs Entra ID.
        public_network_access="Enabled",
        zone_redundancy="Enabled" if settings.environment == "prod" else "Disabled",
        tags=context.tags,
        opts=child,
    )
    # The kubelet pulls images with the cluster's kubelet identity: no image pull secrets.
    azure.authorization.RoleAssignment(
        context.name("registry-kubelet-pull"),
        principal_id=kubelet_object_id,
        principal_type="ServicePrincipal",
        role_definition_id=context.role(ACR_PULL),
        scope=registry.id,
        opts=child,
    )
    # The deployer pushes with its own login: on this registry only (an Owner of the subscription could
    # already; a deployer with narrower roles needs it said).
    push_grant = azure.authorization.RoleAssignment(
        context.name("registry-push"),
        principal_id=context.deployer.object_id,
        principal_type=context.azure.deployer_principal_type,
        role_definition_id=context.role(ACR_PUSH),
        scope=registry.id,
        opts=child,
    )
    arm_token = azure.authorization.get_client_token_output(opts=pulumi.InvokeOptions(parent=component))
    login = registry.login_server
    # The exchange waits for the grant, or a deployer without another push role gets no usable token.
    server = pulumi.Output.all(login, push_grant.id).apply(lambda args: str(args[0]))
    component.finish(
        address=login,
        username=REFRESH_TOKEN_USER,
        password=push_password(server, context.deployer.tenant_id, arm_token.token),
        repositories={image: pulumi.Output.concat(login, "/", image) for image in IMAGE_NAMES},
    )
    return component
