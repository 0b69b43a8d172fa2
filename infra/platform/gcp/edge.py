"""GCP edge: the GKE Gateway behind Cloud Armor.

Cloud API Gateway only fronts managed backends (Cloud Run, functions, App Engine), so the public entry
is the GKE Gateway (`gke-l7-global-external-managed`: the global external Application Load Balancer)
with a Google-managed certificate, a global static IP and a Cloud Armor policy that allows only the
client CIDRs and throttles per API key. The load balancer reaches the gateway pods directly through
NEGs, so the gateway Service stays ClusterIP: nothing in the cluster gets a public address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from infra.platform.base import Edge, EdgeBackend, EdgeTargets, ServiceExposure
from infra.platform.gcp.provider import GcpContext

# Where the global external Application Load Balancer's proxies (GFEs) and its health checks connect
# from (GCP docs, "Firewall rules" for external Application Load Balancers). The global load balancer
# needs no proxy-only subnet (only regional and cross-region ones do).
GOOGLE_FRONT_END_RANGES = ("35.191.0.0/16", "130.211.0.0/22")
GATEWAY_CLASS = "gke-l7-global-external-managed"
GATEWAY_API = "gateway.networking.k8s.io/v1"
GKE_NETWORKING_API = "networking.gke.io/v1"
TLS_PROFILE, MIN_TLS_VERSION = "MODERN", "TLS_1_2"
# Cloud Armor accepts at most 10 source ranges per basic-match rule.
ARMOR_RANGES_PER_RULE = 10
ARMOR_FIRST_PRIORITY = 1000
ARMOR_DEFAULT_PRIORITY = 2147483647
# Throttle windows Cloud Armor accepts; the shortest one that holds a burst approximates "per second".
ARMOR_INTERVALS = (10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600)
API_KEY_HEADER = "Authorization"
# The gateway container's readiness path (serving/); GKE's default health check asks for `/`.
GATEWAY_READY_PATH = "/readyz"
GATEWAY_CONTAINER_PORT = 8080


@dataclass(frozen=True)
class GcpEdgeTargets(EdgeTargets):
    """What the edge attaches to: the VPC (its firewall), the nodes' service account, the cluster."""

    context: GcpContext
    network_id: pulumi.Input[str]
    node_service_account_email: pulumi.Input[str]
    cluster_provider: pulumi.ProviderResource


def gateway_exposure() -> ServiceExposure:
    """ClusterIP: the Gateway's NEGs reach pod IPs from the Google front-end ranges only."""
    return ServiceExposure(type="ClusterIP", source_ranges=GOOGLE_FRONT_END_RANGES)


def armor_threshold(rate_per_second: int, burst: int) -> tuple[int, int]:
    """(count, interval_sec) for a Cloud Armor throttle: the average rate, over a window that fits a burst."""
    window = max(1, math.ceil(burst / rate_per_second))
    interval = next((i for i in ARMOR_INTERVALS if i >= window), ARMOR_INTERVALS[-1])
    return rate_per_second * interval, interval


def armor_rules(
    client_cidrs: tuple[str, ...], rate_per_second: int, burst: int
) -> list[gcp.compute.SecurityPolicyRuleArgs]:
    """Throttle rules for the allowed clients (per API key), then deny everything else."""
    count, interval = armor_threshold(rate_per_second, burst)
    ranges = ["*" if cidr == "0.0.0.0/0" else cidr for cidr in client_cidrs]
    chunks = [ranges[i : i + ARMOR_RANGES_PER_RULE] for i in range(0, len(ranges), ARMOR_RANGES_PER_RULE)]
    rules = [
        gcp.compute.SecurityPolicyRuleArgs(
            priority=ARMOR_FIRST_PRIORITY + index,
            action="throttle",
            description="Allowed client CIDRs, rate limited per API key",
            match=gcp.compute.SecurityPolicyRuleMatchArgs(
                versioned_expr="SRC_IPS_V1",
                config=gcp.compute.SecurityPolicyRuleMatchConfigArgs(src_ip_ranges=chunk),
            ),
            rate_limit_options=gcp.compute.SecurityPolicyRuleRateLimitOptionsArgs(
                conform_action="allow",
                exceed_action="deny(429)",
                # Keyed on the API key; requests without the header share one bucket (Cloud Armor's
                # fallback to ALL) and are refused by our gateway anyway.
                enforce_on_key="HTTP_HEADER",
                enforce_on_key_name=API_KEY_HEADER,
                rate_limit_threshold=gcp.compute.SecurityPolicyRuleRateLimitOptionsRateLimitThresholdArgs(
                    count=count, interval_sec=interval
                ),
            ),
        )
        for index, chunk in enumerate(chunks)
    ]
    rules.append(
        gcp.compute.SecurityPolicyRuleArgs(
            priority=ARMOR_DEFAULT_PRIORITY,
            action="deny(403)",
            description="Default: deny every other client",
            match=gcp.compute.SecurityPolicyRuleMatchArgs(
                versioned_expr="SRC_IPS_V1",
                config=gcp.compute.SecurityPolicyRuleMatchConfigArgs(src_ip_ranges=["*"]),
            ),
        )
    )
    return rules


def build_edge(targets: GcpEdgeTargets, backend: EdgeBackend) -> Edge:
    """Global IP, managed certificate, Cloud Armor, and the Gateway/HTTPRoute/policies on the cluster."""
    context = targets.context
    settings, domain = context.settings, context.gcp.domain
    component = Edge(context.name("edge"), context.options)
    child = context.child(component)
    address = gcp.compute.GlobalAddress(
        context.name("edge-ip"), address_type="EXTERNAL", ip_version="IPV4", opts=child
    )
    # A managed certificate needs a DNS name that resolves to the load balancer; without a domain of
    # our own, sslip.io maps `<a-b-c-d>.sslip.io` to that address (dev stacks only). sslip.io publishes no
    # CAA record, so Google's CA may issue for it; sslip.io is not on the public suffix list, so every user
    # of it shares the CAs' per-domain rate limits (Let's Encrypt, Certificate Manager's fallback CA, is at
    # its limit for sslip.io).
    hostname: pulumi.Output[str] = (
        pulumi.Output.from_input(domain)
        if domain
        else address.address.apply(lambda ip: f"{ip.replace('.', '-')}.sslip.io")
    )
    # Certificate Manager with load-balancer authorisation (the only kind open to a name whose DNS we do
    # not control): Google issues the certificate once the name resolves to the Gateway's address and the
    # load balancer serves it, up to an hour after; nothing to upload or renew.
    certificate = gcp.certificatemanager.Certificate(
        context.name("edge-cert"),
        scope="DEFAULT",
        managed=gcp.certificatemanager.CertificateManagedArgs(domains=[hostname]),
        opts=child,
    )
    cert_map = gcp.certificatemanager.CertificateMap(context.name("edge-certs"), opts=child)
    gcp.certificatemanager.CertificateMapEntry(
        context.name("edge-cert-entry"),
        map=cert_map.name,
        hostname=hostname,
        certificates=[certificate.id],
        opts=child,
    )
    # TLS 1.2 or newer with MODERN ciphers (the default policy still accepts TLS 1.0); the Gateway takes it
    # through a GCPGatewayPolicy below.
    tls_policy = gcp.compute.SSLPolicy(
        context.name("edge-tls"),
        profile=TLS_PROFILE,
        min_tls_version=MIN_TLS_VERSION,
        description="tritonform edge: TLS 1.2+ only",
        opts=child,
    )
    armor = gcp.compute.SecurityPolicy(
        context.name("edge-armor"),
        type="CLOUD_ARMOR",
        description="tritonform edge: client allow-list and per-key throttling",
        rules=armor_rules(
            settings.allowed_client_cidrs, settings.edge.rate_limit_per_second, settings.edge.burst
        ),
        opts=child,
    )
    # The load balancer and its health checks reach pod IPs on the gateway's container port.
    gcp.compute.Firewall(
        context.name("edge-to-gateway"),
        network=targets.network_id,
        direction="INGRESS",
        source_ranges=list(GOOGLE_FRONT_END_RANGES),
        target_service_accounts=[targets.node_service_account_email],
        allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(GATEWAY_CONTAINER_PORT)])],
        description="Google front ends and health checks to the tritonform gateway pods",
        opts=child,
    )
    k8s_opts = pulumi.ResourceOptions(
        parent=component, provider=targets.cluster_provider, depends_on=list(backend.depends_on)
    )
    gateway_name = context.name("edge")
    _custom(
        "Gateway",
        GATEWAY_API,
        gateway_name,
        backend,
        {
            "gatewayClassName": GATEWAY_CLASS,
            "listeners": [{"name": "https", "protocol": "HTTPS", "port": 443}],
            "addresses": [{"type": "NamedAddress", "value": address.name}],
        },
        k8s_opts,
        annotations={"networking.gke.io/certmap": cert_map.name},
    )
    _custom(
        "GCPGatewayPolicy",
        GKE_NETWORKING_API,
        gateway_name,
        backend,
        {
            "default": {"sslPolicy": tls_policy.name},
            "targetRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway_name},
        },
        k8s_opts,
    )
    _custom(
        "HTTPRoute",
        GATEWAY_API,
        gateway_name,
        backend,
        {
            "parentRefs": [{"name": gateway_name}],
            "hostnames": [hostname],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                    "backendRefs": [{"name": backend.service_name, "port": backend.port}],
                }
            ],
        },
        k8s_opts,
    )
    target = {"group": "", "kind": "Service", "name": backend.service_name}
    _custom(
        "GCPBackendPolicy",
        GKE_NETWORKING_API,
        gateway_name,
        backend,
        {
            "default": {
                # A whole-response timeout (not idle): it must outlast the longest stream.
                "timeoutSec": settings.edge.stream_timeout_seconds + 60,
                "securityPolicy": armor.name,
                "connectionDraining": {"drainingTimeoutSec": 60},
                "logging": {"enabled": True, "sampleRate": 1_000_000},
            },
            "targetRef": target,
        },
        k8s_opts,
    )
    _custom(
        "HealthCheckPolicy",
        GKE_NETWORKING_API,
        gateway_name,
        backend,
        {
            "default": {"config": {"type": "HTTP", "httpHealthCheck": {"requestPath": GATEWAY_READY_PATH}}},
            "targetRef": target,
        },
        k8s_opts,
    )
    component.finish(endpoint_url=pulumi.Output.concat("https://", hostname))
    return component


def _custom(
    kind: str,
    api_version: str,
    name: str,
    backend: EdgeBackend,
    spec: dict[str, Any],
    opts: pulumi.ResourceOptions,
    annotations: dict[str, pulumi.Input[str]] | None = None,
) -> k8s.apiextensions.CustomResource:
    """A Gateway API / GKE networking object in the gateway Service's namespace."""
    return k8s.apiextensions.CustomResource(
        f"{name}-{kind.lower()}",
        api_version=api_version,
        kind=kind,
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=backend.namespace, annotations=annotations),
        spec=spec,
        opts=opts,
    )
