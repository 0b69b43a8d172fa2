"""Azure Container Registry: private, no admin user, the kubelet pulls with its identity, pushes use a
repository-scoped ACR token.

Why a token and not `listRegistryCredentials`: that call only returns the admin user's passwords, and the
admin user is a registry-wide, never-expiring credential we keep disabled. A scope-mapped token may only
push and pull our two repositories, and its password expires. ARM creates a token without a password
(the password comes from the registry's `generateCredentials` action, which pulumi-azure-native does not
expose: pulumi/pulumi-azure-native#3099), so a small dynamic resource calls that action with the
deployer's ARM access token and keeps the password as a secret.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pulumi
import pulumi.dynamic
import pulumi_azure_native as azure

from infra.platform.azure.cluster import AzureCluster
from infra.platform.azure.provider import AzureContext
from infra.platform.base import IMAGE_NAMES, ContainerRegistry

ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538f"  # built-in role definition id: AcrPull
ARM = "https://management.azure.com"
GENERATE_CREDENTIALS_API = "2023-07-01"
PASSWORD_DAYS = 30
# A password this close to expiry is replaced on the next `pulumi up`.
RENEW_WITHIN_DAYS = 7


def registry_name(prefix: str, resource_group: str, region: str) -> str:
    """An ACR name (5-50 letters and digits, globally unique), stable per stack."""
    digest = hashlib.sha256(f"acr/{prefix}/{resource_group}/{region}".encode()).hexdigest()[:8]
    return f"{re.sub(r'[^a-z0-9]', '', prefix)[:20]}images{digest}"


def push_actions() -> list[str]:
    """Scope-map actions: read and write on our image repositories only (no delete, no metadata)."""
    return [f"repositories/{image}/content/{verb}" for image in IMAGE_NAMES for verb in ("read", "write")]


class _TokenPasswordProvider(pulumi.dynamic.ResourceProvider):
    """Generates `password1` of an ACR token through ARM's `generateCredentials` action.

    Stack state refers to this class by its import path (`infra.platform.azure.registry`), and Pulumi
    imports it from there to refresh, replace or delete a password: moving it breaks deployed stacks.
    """

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        expiry = (datetime.now(UTC) + timedelta(days=PASSWORD_DAYS)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"tokenId": props["token_id"], "name": "password1", "expiry": expiry}
        result = _arm_post(
            f"{props['registry_id']}/generateCredentials?api-version={GENERATE_CREDENTIALS_API}",
            body,
            props["arm_token"],
        )
        password = next(p["value"] for p in result["passwords"] if p.get("name") == "password1")
        outs = {
            "token_id": props["token_id"],
            "registry_id": props["registry_id"],
            "expiry": expiry,
            "username": result.get("username", ""),
            "password": password,
        }
        return pulumi.dynamic.CreateResult(id_=f"{props['token_id']}/passwords/password1", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        changed = [key for key in ("token_id", "registry_id") if olds.get(key) != news.get(key)]
        expiry = olds.get("expiry")
        renew_by = datetime.now(UTC) + timedelta(days=RENEW_WITHIN_DAYS)
        if not expiry or datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) < renew_by:
            changed.append("expiry")
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=False)


def _arm_post(path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    """POST an ARM action and follow its long-running-operation `Location` until the result arrives."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"{ARM}{path}", json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        location, status, text = response.headers.get("Location"), response.status, response.read()
    for _ in range(60):
        if status == 200 and text:
            parsed: dict[str, Any] = json.loads(text)
            return parsed
        if not location:
            break
        time.sleep(2)
        poll = urllib.request.Request(location, headers=headers)
        with urllib.request.urlopen(poll, timeout=60) as response:
            status, text = response.status, response.read()
    raise RuntimeError(f"ACR generateCredentials did not return passwords for {path}")


class AcrTokenPassword(pulumi.dynamic.Resource, module="acr", name="TokenPassword"):
    """The generated password of one ACR token (secret)."""

    username: pulumi.Output[str]
    password: pulumi.Output[str]
    expiry: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        registry_id: pulumi.Input[str],
        token_id: pulumi.Input[str],
        arm_token: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "registry_id": registry_id,
            "token_id": token_id,
            "arm_token": pulumi.Output.secret(arm_token),
            "username": None,
            "password": None,
            "expiry": None,
        }
        secret_outputs = pulumi.ResourceOptions(additional_secret_outputs=["password"])
        merged = pulumi.ResourceOptions.merge(opts, secret_outputs)
        super().__init__(_TokenPasswordProvider(), name, props, merged)


def build_registry(
    context: AzureContext, group: azure.resources.ResourceGroup, cluster: AzureCluster
) -> ContainerRegistry:
    """ACR, AcrPull for the AKS kubelet identity, and a push token scoped to our repositories."""
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
        # still needs Entra ID or a scoped token.
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
    scope_map = azure.containerregistry.ScopeMap(
        context.name("registry-push"),
        resource_group_name=group.name,
        registry_name=registry.name,
        scope_map_name="tritonform-push",
        description="Push and pull the tritonform images only",
        actions=push_actions(),
        opts=child,
    )
    token = azure.containerregistry.Token(
        context.name("registry-push"),
        resource_group_name=group.name,
        registry_name=registry.name,
        token_name="tritonform-push",
        scope_map_id=scope_map.id,
        status="enabled",
        opts=child,
    )
    arm_token = azure.authorization.get_client_token_output(opts=pulumi.InvokeOptions(parent=component))
    password = AcrTokenPassword(
        context.name("registry-push-password"),
        registry_id=registry.id,
        token_id=token.id,
        arm_token=arm_token.token,
        opts=child,
    )
    login = registry.login_server
    component.finish(
        address=login,
        username=token.name,
        password=password.password,
        repositories={image: pulumi.Output.concat(login, "/", image) for image in IMAGE_NAMES},
    )
    return component
