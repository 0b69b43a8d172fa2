"""Azure edge: API Management (classic VNet injection, External mode) in front of an internal load balancer.

The gateway Service gets an internal Azure load balancer on a fixed private IP of the system node
subnet, so APIM's Backend can name it before the Service exists. APIM (Developer or Premium: the
Consumption tier cannot hold long-running connections) lives in its own subnet with the NSG rules
classic VNet injection requires, forwards `/v1/*` without buffering (server-sent events), filters
client IPs, and rate limits per API key. Subscription keys are off: our gateway checks API keys.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

import pulumi
import pulumi_azure_native as azure

from infra.platform.azure.network import apim_subnet, backend_ip, node_subnet_name
from infra.platform.azure.provider import AzureContext
from infra.platform.base import Edge, EdgeBackend, EdgeTargets, ServiceExposure
from infra.settings import StackSettings

BACKEND_ID = "tritonform-gateway"
API_ID = "tritonform"
API_KEY_HEADER = "Authorization"
# `forward-request timeout` bounds the wait for the response *headers*; APIM docs: values above 240 s
# may not be honoured (idle connections are dropped). Streams keep flowing after the headers.
APIM_MAX_HEADER_TIMEOUT = 240
_INTERNAL_LB = "service.beta.kubernetes.io/azure-load-balancer-internal"
APIM_TIMEOUTS = pulumi.CustomTimeouts(create="2h", update="2h", delete="2h")


@dataclass(frozen=True)
class AzureEdgeTargets(EdgeTargets):
    """What the edge attaches to: the resource group and VNet APIM joins, and the node subnets (Azure
    refuses concurrent subnet writes in one VNet, so APIM's subnet waits for them)."""

    context: AzureContext
    group: azure.resources.ResourceGroup
    vnet_name: pulumi.Input[str]
    node_subnets: list[azure.network.Subnet]


def gateway_exposure(settings: StackSettings) -> ServiceExposure:
    """An internal load balancer on a fixed IP of the system subnet, reachable from APIM's subnet only."""
    idle_minutes = min(100, max(4, math.ceil(settings.edge.stream_timeout_seconds / 60) + 1))
    return ServiceExposure(
        type="LoadBalancer",
        source_ranges=(apim_subnet(settings.network.cidr),),
        # Cilium rewrites the source to a node address under "Cluster"; the network policy allows
        # only the APIM subnet, so keep the real source.
        external_traffic_policy="Local",
        annotations={
            _INTERNAL_LB: "true",
            f"{_INTERNAL_LB}-subnet": node_subnet_name(settings.name, "system"),
            "service.beta.kubernetes.io/azure-load-balancer-ipv4": backend_ip(settings.network.cidr),
            # Azure's load balancer drops idle flows after 4 minutes by default: outlast a stream.
            "service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout": str(idle_minutes),
        },
    )


def apim_service_name(prefix: str, resource_group: str, region: str) -> str:
    """A globally unique APIM name (it becomes `<name>.azure-api.net`), stable per stack."""
    digest = hashlib.sha256(f"apim/{prefix}/{resource_group}/{region}".encode()).hexdigest()[:6]
    return f"{re.sub(r'[^a-z0-9-]', '', prefix)[:30]}-apim-{digest}"


def _address_ranges(cidrs: tuple[str, ...]) -> str:
    ranges = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr)
        ranges.append(f'      <address-range from="{net.network_address}" to="{net.broadcast_address}" />')
    return "\n".join(ranges)


def api_policy(settings: StackSettings) -> str:
    """The API's policy (raw XML).

    No response caching, content validation or body logging (no `cache-*`, `validate-content`, `log-to-*`,
    and no diagnostics with body bytes): each of them buffers the response, which would hold back every
    server-sent event until the generation ends.
    """
    edge = settings.edge
    period = max(1, math.ceil(edge.burst / edge.rate_limit_per_second))
    calls = edge.rate_limit_per_second * period
    key = f'@(context.Request.Headers.GetValueOrDefault("{API_KEY_HEADER}", context.Request.IpAddress))'
    timeout = min(edge.stream_timeout_seconds, APIM_MAX_HEADER_TIMEOUT)
    return f"""<policies>
  <inbound>
    <base />
    <ip-filter action="allow">
{_address_ranges(settings.allowed_client_cidrs)}
    </ip-filter>
    <rate-limit-by-key calls="{calls}" renewal-period="{period}" counter-key={quoteattr(key)} />
    <set-backend-service backend-id="{BACKEND_ID}" />
  </inbound>
  <backend>
    <forward-request timeout="{timeout}" buffer-response="false" />
  </backend>
  <outbound>
    <base />
  </outbound>
  <on-error>
    <base />
  </on-error>
</policies>"""


def _nsg_rules() -> list[azure.network.SecurityRuleArgs]:
    """What classic VNet injection (stv2, External mode) needs (MS Learn: virtual network reference)."""
    rules = [
        ("clients-https", "Inbound", "Internet", "VirtualNetwork", ["443"]),
        ("apim-management", "Inbound", "ApiManagement", "VirtualNetwork", ["3443"]),
        ("azure-load-balancer", "Inbound", "AzureLoadBalancer", "VirtualNetwork", ["6390"]),
        ("storage", "Outbound", "VirtualNetwork", "Storage", ["443"]),
        ("sql", "Outbound", "VirtualNetwork", "Sql", ["1433"]),
        ("key-vault", "Outbound", "VirtualNetwork", "AzureKeyVault", ["443"]),
        ("monitor", "Outbound", "VirtualNetwork", "AzureMonitor", ["1886", "443"]),
    ]
    return [
        azure.network.SecurityRuleArgs(
            name=name,
            priority=100 + 10 * index,
            direction=direction,
            access="Allow",
            protocol="Tcp",
            source_address_prefix=source,
            source_port_range="*",
            destination_address_prefix=destination,
            destination_port_ranges=ports,
        )
        for index, (name, direction, source, destination, ports) in enumerate(rules)
    ]


def build_edge(targets: AzureEdgeTargets, backend: EdgeBackend) -> Edge:
    """APIM in its own subnet, a Backend on the internal load balancer IP, the API and its policy."""
    context, group = targets.context, targets.group
    settings, azure_settings = context.settings, context.azure
    component = Edge(context.name("edge"), context.options)
    child = context.child(component)
    nsg = azure.network.NetworkSecurityGroup(
        context.name("apim"),
        resource_group_name=group.name,
        security_rules=_nsg_rules(),
        tags=context.tags,
        opts=child,
    )
    subnet = azure.network.Subnet(
        context.name("apim"),
        subnet_name=context.name("apim"),
        resource_group_name=group.name,
        virtual_network_name=targets.vnet_name,
        address_prefix=apim_subnet(settings.network.cidr),
        network_security_group=azure.network.NetworkSecurityGroupArgs(id=nsg.id),
        # One subnet change at a time per VNet: Azure refuses concurrent subnet writes.
        opts=pulumi.ResourceOptions(parent=component, depends_on=list(targets.node_subnets)),
    )
    service_name = apim_service_name(settings.name, context.resource_group_name, settings.region)
    public_ip = azure.network.PublicIPAddress(
        context.name("apim"),
        resource_group_name=group.name,
        sku=azure.network.PublicIPAddressSkuArgs(name="Standard", tier="Regional"),
        public_ip_allocation_method="Static",
        dns_settings=azure.network.PublicIPAddressDnsSettingsArgs(domain_name_label=service_name),
        tags=context.tags,
        opts=child,
    )
    sku = azure_settings.apim_sku or ("Premium" if settings.environment == "prod" else "Developer")
    apim = azure.apimanagement.ApiManagementService(
        context.name("apim"),
        resource_group_name=group.name,
        service_name=service_name,
        publisher_email=azure_settings.apim_publisher_email,
        publisher_name=azure_settings.apim_publisher_name,
        sku=azure.apimanagement.ApiManagementServiceSkuPropertiesArgs(name=sku, capacity=1),
        virtual_network_type="External",
        virtual_network_configuration=azure.apimanagement.VirtualNetworkConfigurationArgs(
            subnet_resource_id=subnet.id
        ),
        public_ip_address_id=public_ip.id,
        identity=azure.apimanagement.ApiManagementServiceIdentityArgs(type="SystemAssigned"),
        # TLS 1.2+ only, on both sides.
        custom_properties={
            f"Microsoft.WindowsAzure.ApiManagement.Gateway.Security.{side}.{proto}": "false"
            for side in ("Protocols", "Backend.Protocols")
            for proto in ("Tls10", "Tls11", "Ssl30")
        },
        tags=context.tags,
        # Creating APIM in a VNet takes 30-90 minutes (Microsoft: "30-40 minutes or more"; labs: 45-75), and a
        # VNet or SKU change 15 minutes or more: give it far longer than the provider's default wait.
        opts=pulumi.ResourceOptions(parent=component, custom_timeouts=APIM_TIMEOUTS),
    )
    apim_backend = azure.apimanagement.Backend(
        context.name("apim-backend"),
        backend_id=BACKEND_ID,
        protocol="http",
        url=f"http://{backend_ip(settings.network.cidr)}:{backend.port}",
        description="The tritonform gateway's internal load balancer",
        opts=pulumi.ResourceOptions(parent=component, depends_on=list(backend.depends_on)),
        resource_group_name=group.name,
        service_name=apim.name,
    )
    api = azure.apimanagement.Api(
        context.name("apim-api"),
        api_id=API_ID,
        display_name="tritonform OpenAI-compatible API",
        path="",
        protocols=["https"],
        subscription_required=False,
        opts=child,
        resource_group_name=group.name,
        service_name=apim.name,
    )
    operations = [
        azure.apimanagement.ApiOperation(
            context.name(f"apim-{method.lower()}-v1"),
            api_id=api.name,
            operation_id=f"{method.lower()}-v1",
            display_name=f"{method} /v1/*",
            method=method,
            url_template="/v1/*",
            opts=child,
            resource_group_name=group.name,
            service_name=apim.name,
        )
        for method in ("POST", "GET")
    ]
    azure.apimanagement.ApiPolicy(
        context.name("apim-policy"),
        api_id=api.name,
        policy_id="policy",
        format="rawxml",
        value=api_policy(settings),
        opts=pulumi.ResourceOptions(parent=component, depends_on=[apim_backend, *operations]),
        resource_group_name=group.name,
        service_name=apim.name,
    )
    component.finish(endpoint_url=apim.gateway_url)
    return component
