"""The only public entry is the cloud's API gateway: no other public load balancer, Ingress, IP or node."""

from __future__ import annotations

from collections.abc import Iterator

from infra.policies.base import (
    UNKNOWN,
    Resource,
    StackRule,
    StackView,
    Violation,
    as_list,
    is_true,
    is_world,
    refers_to,
)
from infra.policies.rules_k8s import kind_of

# Annotations that make a Service of type LoadBalancer internal, per cloud: (annotation, accepted values).
INTERNAL_LB_ANNOTATIONS: dict[str, tuple[tuple[str, set[str]], ...]] = {
    "aws": (
        ("service.beta.kubernetes.io/aws-load-balancer-internal", {"true"}),
        ("service.beta.kubernetes.io/aws-load-balancer-scheme", {"internal"}),
    ),
    "gcp": (
        ("networking.gke.io/load-balancer-type", {"internal"}),
        ("cloud.google.com/load-balancer-type", {"internal"}),
    ),
    "azure": (("service.beta.kubernetes.io/azure-load-balancer-internal", {"true"}),),
}
INTERNAL_INGRESS = {
    "kubernetes.io/ingress.class": {"gce-internal"},
    "alb.ingress.kubernetes.io/scheme": {"internal"},
    "appgw.ingress.kubernetes.io/use-private-ip": {"true"},
}
# An external-class GKE Gateway is GCP's edge (behind Cloud Armor); elsewhere it is a second door.
EDGE_GATEWAY_CLOUD = "gcp"
APIM_SERVICE = "azure-native:apimanagement:ApiManagementService"


def cloud_of(view: StackView) -> str | None:
    if view.cloud:
        return view.cloud
    for prefix, cloud in (("aws:", "aws"), ("gcp:", "gcp"), ("azure-native:", "azure")):
        if any(r.type.startswith(prefix) for r in view.resources):
            return cloud
    return None


def _annotated(annotations: object, accepted: dict[str, set[str]]) -> bool:
    if not isinstance(annotations, dict):
        return False
    return any(str(annotations.get(k, "")).lower() in v for k, v in accepted.items())


def _kubernetes(view: StackView, cloud: str | None) -> Iterator[Violation]:
    choices = INTERNAL_LB_ANNOTATIONS.get(cloud or "") or tuple(
        a for group in INTERNAL_LB_ANNOTATIONS.values() for a in group
    )
    accepted = dict(choices)
    hint = ", ".join(f"{k}: {sorted(v)[0]!r}" for k, v in choices)
    for r in view.resources:
        kind = kind_of(r)
        if kind == "Service" and r.get("spec.type") == "LoadBalancer":
            if not _annotated(r.get("metadata.annotations"), accepted):
                yield Violation(
                    "Service of type LoadBalancer would get a public load balancer; the only public entry is "
                    f"the API gateway. Annotate it as internal ({hint}) or use ClusterIP.",
                    r,
                )
        elif kind == "Ingress":
            if not (
                _annotated(r.get("metadata.annotations"), INTERNAL_INGRESS)
                or r.get("spec.ingressClassName") == "gce-internal"
            ):
                yield Violation(
                    "Ingress would create a public load balancer; route public traffic through the API "
                    "gateway "
                    "and make this Ingress internal (or remove it).",
                    r,
                )
        elif kind == "Gateway" and "external" in str(r.get("spec.gatewayClassName", "")).lower():
            yield from _external_gateway(view, r, cloud)


def _external_gateway(view: StackView, gateway: Resource, cloud: str | None) -> Iterator[Violation]:
    """An external Gateway is only acceptable as GCP's edge, and only behind Cloud Armor."""
    if cloud != EDGE_GATEWAY_CLOUD:
        yield Violation(
            f"Gateway uses the external class {gateway.get('spec.gatewayClassName')!r}; only the cloud's "
            "API gateway may be public here: use an internal gateway class.",
            gateway,
        )
    elif not any(
        kind_of(p) == "GCPBackendPolicy" and p.get("spec.default.securityPolicy") for p in view.resources
    ):
        yield Violation(
            "external GKE Gateway has no Cloud Armor policy on its backend; add a GCPBackendPolicy with "
            "spec.default.securityPolicy (client allow-list and rate limit) for the gateway Service.",
            gateway,
        )


def _aws(view: StackView) -> Iterator[Violation]:
    for r in view.resources:
        if r.type in (
            "aws:lb/loadBalancer:LoadBalancer",
            "aws:alb/loadBalancer:LoadBalancer",
            "aws:elb/loadBalancer:LoadBalancer",
        ):
            if not is_true(r.get("internal")):
                yield Violation(
                    "load balancer is internet-facing; set internal=true (API Gateway is the edge).", r
                )
        elif r.type == "aws:ec2/eip:Eip" and (r.get("instance") or r.get("networkInterface")):
            yield Violation(
                "Elastic IP attached to an instance or interface; remove it (NAT EIPs are fine).", r
            )
        elif r.type == "aws:ec2/instance:Instance" and is_true(r.get("associatePublicIpAddress")):
            yield Violation("instance gets a public IP; set associatePublicIpAddress=false.", r)
        elif r.type == "aws:eks/nodeGroup:NodeGroup" and r.get("remoteAccess"):
            if not as_list(r.get("remoteAccess.sourceSecurityGroupIds")):
                yield Violation(
                    "node group remoteAccess opens SSH to 0.0.0.0/0; remove remoteAccess or set "
                    "sourceSecurityGroupIds.",
                    r,
                )
        elif r.type == "aws:lambda/functionUrl:FunctionUrl" and r.get("authorizationType") == "NONE":
            yield Violation("public Lambda function URL; go through the API gateway.", r)


def _gcp(view: StackView) -> Iterator[Violation]:
    for r in view.resources:
        if r.type == "gcp:container/cluster:Cluster" and not is_true(
            r.get("privateClusterConfig.enablePrivateNodes")
        ):
            yield Violation("GKE nodes get public IPs; set privateClusterConfig.enablePrivateNodes=true.", r)
        elif r.type == "gcp:compute/address:Address" and r.get("addressType", "EXTERNAL") not in (
            "INTERNAL",
            UNKNOWN,
        ):
            yield Violation(
                "external regional IP address; only the edge gateway's global address may be public.", r
            )
        elif r.type == "gcp:compute/forwardingRule:ForwardingRule" and not str(
            r.get("loadBalancingScheme", "EXTERNAL")
        ).startswith("INTERNAL"):
            yield Violation(
                "external forwarding rule; set loadBalancingScheme='INTERNAL' (or INTERNAL_MANAGED).", r
            )
        elif r.type == "gcp:compute/instance:Instance" and any(
            isinstance(n, dict) and as_list(n.get("accessConfigs"))
            for n in as_list(r.get("networkInterfaces"))
        ):
            yield Violation(
                "VM has an external IP (networkInterfaces[].accessConfigs); remove the access config.", r
            )
        elif (
            r.type == "gcp:compute/firewall:Firewall"
            and r.get("direction", "INGRESS") == "INGRESS"
            and any(is_world(c) for c in as_list(r.get("sourceRanges")))
            and not is_true(r.get("disabled"))
        ):
            yield Violation(
                "firewall admits 0.0.0.0/0; list the load balancer / health check ranges only.", r
            )


def _azure(view: StackView) -> Iterator[Violation]:
    apims = view.of_type(APIM_SERVICE)
    for r in view.resources:
        if r.type == "azure-native:network:PublicIPAddress":
            if not any(refers_to(a.get("publicIpAddressId"), r, r.get("id")) for a in apims):
                yield Violation(
                    "public IP address not used by API Management; the only public entry is APIM.", r
                )
        elif r.type == "azure-native:network:LoadBalancer" and any(
            isinstance(f, dict) and f.get("publicIPAddress")
            for f in as_list(r.get("frontendIPConfigurations"))
        ):
            yield Violation("load balancer has a public frontend IP; use a private frontend.", r)
        elif r.type == "azure-native:containerservice:AgentPool" and is_true(r.get("enableNodePublicIP")):
            yield Violation("AKS agent pool gives nodes public IPs; set enableNodePublicIP=False.", r)
        elif r.type == "azure-native:containerservice:ManagedCluster":
            for profile in as_list(r.get("agentPoolProfiles")):
                if isinstance(profile, dict) and is_true(profile.get("enableNodePublicIP")):
                    yield Violation(
                        f"AKS agent pool {profile.get('name')!r} gives nodes public IPs; set "
                        "enableNodePublicIP=False.",
                        r,
                    )


def only_public_entry_is_api_gateway(view: StackView) -> Iterator[Violation]:
    cloud = cloud_of(view)
    yield from _kubernetes(view, cloud)
    yield from _aws(view)
    yield from _gcp(view)
    yield from _azure(view)


RULES = (
    StackRule(
        "only-public-entry-is-api-gateway",
        "Nothing but the cloud's API gateway is reachable from the internet: no public Service load "
        "balancer, Ingress, external IP or public node.",
        "mandatory",
        only_public_entry_is_api_gateway,
    ),
)
