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
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

import pulumi
import pulumi_azure_native as azure

from infra.platform.base import Edge, EdgeBackend, Platform, ServiceExposure
from infra.settings import StackSettings

if TYPE_CHECKING:
    from infra.platform.azure import AzurePlatform

APIM_SUBNET_PREFIX = 26  # classic injection: a dedicated subnet; /26 leaves room to scale Premium units
BACKEND_ID = "tritonform-gateway"
API_ID = "tritonform"
API_KEY_HEADER = "Authorization"
# `forward-request timeout` bounds the wait for the response *headers*; APIM docs: values above 240 s
# may not be honoured (idle connections are dropped). Streams keep flowing after the headers.
APIM_MAX_HEADER_TIMEOUT = 240
_INTERNAL_LB = "service.beta.kubernetes.io/azure-load-balancer-internal"


def node_subnets(cidr: str) -> tuple[str, str]:
    """System and GPU node subnets (the first two quarters of the VNet; see azure.azure_subnets)."""
    quarters = list(ipaddress.ip_network(cidr).subnets(prefixlen_diff=2))
    return str(quarters[0]), str(quarters[1])


def apim_subnet(cidr: str) -> str:
    """APIM's dedicated subnet: the first /26 of the VNet's third quarter (unused by the node subnets)."""
    third = list(ipaddress.IPv4Network(cidr).subnets(prefixlen_diff=2))[2]
    return str(next(third.subnets(new_prefix=max(third.prefixlen, APIM_SUBNET_PREFIX))))


def backend_ip(cidr: str) -> str:
    """The gateway's internal load balancer IP: the system subnet's last usable address.

    Azure hands out node addresses from the bottom of a subnet, so the top stays free.
    """
    system = ipaddress.IPv4Network(node_subnets(cidr)[0])
    return str(system.broadcast_address - 1)


def internal_lb_exposure(settings: StackSettings, system_subnet_name: str) -> ServiceExposure:
    """An internal load balancer on a fixed IP, reachable from APIM's subnet only."""
    idle_minutes = min(100, max(4, math.ceil(settings.edge.stream_timeout_seconds / 60) + 1))
    return ServiceExposure(
        type="LoadBalancer",
        source_ranges=(apim_subnet(settings.network.cidr),),
        # Cilium rewrites the source to a node address under "Cluster"; the network policy allows
        # only the APIM subnet, so keep the real source.
        external_traffic_policy="Local",
        annotations={
            _INTERNAL_LB: "true",
            f"{_INTERNAL_LB}-subnet": system_subnet_name,
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


def api_management_edge(
    cloud: AzurePlatform,
    platform: Platform,
    backend: EdgeBackend,
    group: azure.resources.ResourceGroup,
    vnet_name: pulumi.Input[str],
    subnet_after: list[pulumi.Resource],
    opts: pulumi.ResourceOptions,
) -> Edge:
    """APIM in its own subnet, a Backend on the internal load balancer IP, the API and its policy."""
    s, a = cloud.settings, cloud.azure
    component = Edge(cloud.name("edge"), opts)
    child = cloud.child(component)
    nsg = azure.network.NetworkSecurityGroup(
        cloud.name("apim"),
        resource_group_name=group.name,
        security_rules=_nsg_rules(),
        tags=cloud.tags,
        opts=child,
    )
    subnet = azure.network.Subnet(
        cloud.name("apim"),
        subnet_name=cloud.name("apim"),
        resource_group_name=group.name,
        virtual_network_name=vnet_name,
        address_prefix=apim_subnet(s.network.cidr),
        network_security_group=azure.network.NetworkSecurityGroupArgs(id=nsg.id),
        # One subnet change at a time per VNet: Azure refuses concurrent subnet writes.
        opts=pulumi.ResourceOptions(parent=component, depends_on=subnet_after),
    )
    service_name = apim_service_name(s.name, a.resource_group or cloud.name("rg"), s.region)
    public_ip = azure.network.PublicIPAddress(
        cloud.name("apim"),
        resource_group_name=group.name,
        sku=azure.network.PublicIPAddressSkuArgs(name="Standard", tier="Regional"),
        public_ip_allocation_method="Static",
        dns_settings=azure.network.PublicIPAddressDnsSettingsArgs(domain_name_label=service_name),
        tags=cloud.tags,
        opts=child,
    )
    sku = a.apim_sku or ("Premium" if s.environment == "prod" else "Developer")
    apim = azure.apimanagement.ApiManagementService(
        cloud.name("apim"),
        resource_group_name=group.name,
        service_name=service_name,
        publisher_email=a.apim_publisher_email,
        publisher_name=a.apim_publisher_name,
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
        tags=cloud.tags,
        opts=child,
    )
    apim_backend = azure.apimanagement.Backend(
        cloud.name("apim-backend"),
        backend_id=BACKEND_ID,
        protocol="http",
        url=f"http://{backend_ip(s.network.cidr)}:{backend.port}",
        description="The tritonform gateway's internal load balancer",
        opts=pulumi.ResourceOptions(parent=component, depends_on=list(backend.depends_on)),
        resource_group_name=group.name,
        service_name=apim.name,
    )
    api = azure.apimanagement.Api(
        cloud.name("apim-api"),
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
            cloud.name(f"apim-{method.lower()}-v1"),
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
        cloud.name("apim-policy"),
        api_id=api.name,
        policy_id="policy",
        format="rawxml",
        value=api_policy(s),
        opts=pulumi.ResourceOptions(parent=component, depends_on=[apim_backend, *operations]),
        resource_group_name=group.name,
        service_name=apim.name,
    )
    component.finish(endpoint_url=apim.gateway_url)
    return component
