"""The namespace's network policies: nothing in or out unless listed here, on every cloud.

Every cloud enforces them (EKS through the VPC CNI's network policy agent, GKE with Dataplane V2, AKS
with Cilium; tests/infra/platform/test_contract.py holds that). Kubernetes policies cannot name DNS
names, so the cloud APIs (object storage, the identity token exchange) are reached over HTTPS (443)
to any address; everything else is closed: Triton takes calls only from the gateway, the gateway only
from the edge's path, and metrics are scraped only from the monitoring namespace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.platform.base import EgressEndpoint, ServiceExposure

netpol = k8s.networking.v1
HTTPS = 443
DNS = 53
ANYWHERE = "0.0.0.0/0"


@dataclass(frozen=True)
class PolicyTargets:
    """Who is who in the namespace: the label key and the apps, their ports and their peers."""

    namespace: pulumi.Input[str]
    app_label: str
    triton: str
    gateway: str
    triton_ports: tuple[int, ...]  # what the gateway calls (gRPC, HTTP health)
    metrics_port: int  # Triton's metrics
    gateway_port: int  # the gateway's HTTP port (also its /metrics)
    monitoring_namespace: str
    exposure: ServiceExposure
    identity_egress: tuple[EgressEndpoint, ...]  # the readers' identity endpoints beyond HTTPS
    extra_gateway_egress: tuple[tuple[str, int], ...] = ()  # (app, port) the gateway also calls, alone
    triton_canary: str | None = None  # a canary rollout's Triton: reached and scraped as Triton is
    training: str | None = None  # training Jobs' pods: torchrun's rendezvous and NCCL among themselves


def _app(targets: PolicyTargets, app: str) -> k8s.meta.v1.LabelSelectorArgs:
    return k8s.meta.v1.LabelSelectorArgs(match_labels={targets.app_label: app})


def _ports(*ports: int, protocol: str = "TCP") -> list[netpol.NetworkPolicyPortArgs]:
    return [netpol.NetworkPolicyPortArgs(port=port, protocol=protocol) for port in ports]


def network_policies(targets: PolicyTargets, opts: pulumi.ResourceOptions) -> None:
    """Default deny both ways, then the few paths the inference workload needs."""

    def policy(
        name: str,
        app: str | None,
        ingress: Sequence[netpol.NetworkPolicyIngressRuleArgs] | None = None,
        egress: Sequence[netpol.NetworkPolicyEgressRuleArgs] | None = None,
    ) -> None:
        types = [kind for kind, rules in (("Ingress", ingress), ("Egress", egress)) if rules is not None]
        netpol.NetworkPolicy(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=targets.namespace),
            spec=netpol.NetworkPolicySpecArgs(
                pod_selector=_app(targets, app) if app else k8s.meta.v1.LabelSelectorArgs(),
                policy_types=types,
                ingress=list(ingress) if ingress is not None else None,
                egress=list(egress) if egress is not None else None,
            ),
            opts=opts,
        )

    monitoring = netpol.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(
            match_labels={"kubernetes.io/metadata.name": targets.monitoring_namespace}
        )
    )
    # Every pod of the namespace: nothing in, nothing out, unless a policy below allows it.
    policy("default-deny", None, ingress=[], egress=[])
    tritons = [targets.triton, *([targets.triton_canary] if targets.triton_canary else [])]
    for triton in tritons:
        policy(
            f"{triton}-from-gateway",
            triton,
            ingress=[
                netpol.NetworkPolicyIngressRuleArgs(
                    from_=[netpol.NetworkPolicyPeerArgs(pod_selector=_app(targets, targets.gateway))],
                    ports=_ports(*targets.triton_ports),
                ),
                netpol.NetworkPolicyIngressRuleArgs(from_=[monitoring], ports=_ports(targets.metrics_port)),
            ],
        )
    # The gateway takes traffic only from where the cloud's edge connects from.
    policy(
        "gateway-from-edge",
        targets.gateway,
        ingress=[
            netpol.NetworkPolicyIngressRuleArgs(
                from_=[
                    *(
                        netpol.NetworkPolicyPeerArgs(ip_block=netpol.IPBlockArgs(cidr=cidr))
                        for cidr in targets.exposure.source_ranges
                    ),
                    monitoring,  # scrapes /metrics on the same port
                ],
                ports=_ports(targets.gateway_port),
            )
        ],
    )
    # Name lookups, for every pod (cluster DNS or a node-local cache, wherever the cloud runs it).
    policy(
        "egress-dns",
        None,
        egress=[netpol.NetworkPolicyEgressRuleArgs(ports=[*_ports(DNS), *_ports(DNS, protocol="UDP")])],
    )
    # The model bucket and the cloud identity's token exchange: HTTPS, plus the identity endpoints the
    # cloud names (e.g. GKE's metadata server). Both pods read the bucket (Triton, the locator step).
    identity = [
        netpol.NetworkPolicyEgressRuleArgs(
            to=[netpol.NetworkPolicyPeerArgs(ip_block=netpol.IPBlockArgs(cidr=endpoint.cidr))],
            ports=_ports(endpoint.port, protocol=endpoint.protocol),
        )
        for endpoint in targets.identity_egress
    ]
    policy(
        "egress-cloud-apis",
        None,
        egress=[
            netpol.NetworkPolicyEgressRuleArgs(
                to=[netpol.NetworkPolicyPeerArgs(ip_block=netpol.IPBlockArgs(cidr=ANYWHERE))],
                ports=_ports(HTTPS),
            ),
            *identity,
        ],
    )
    # What else the gateway calls (the shared rate-limit store) takes calls from the gateway alone.
    for app, port in targets.extra_gateway_egress:
        policy(
            f"{app}-from-gateway",
            app,
            ingress=[
                netpol.NetworkPolicyIngressRuleArgs(
                    from_=[netpol.NetworkPolicyPeerArgs(pod_selector=_app(targets, targets.gateway))],
                    ports=_ports(port),
                )
            ],
        )
    if targets.training is not None:
        # The pods of a training run talk to each other only (rendezvous, then NCCL on ports it picks).
        peers = [netpol.NetworkPolicyPeerArgs(pod_selector=_app(targets, targets.training))]
        policy(
            "training-peers",
            targets.training,
            ingress=[netpol.NetworkPolicyIngressRuleArgs(from_=peers)],
            egress=[netpol.NetworkPolicyEgressRuleArgs(to=peers)],
        )
    calls = [
        *((triton, targets.triton_ports) for triton in tritons),
        *((app, (port,)) for app, port in targets.extra_gateway_egress),
    ]
    policy(
        "gateway-egress",
        targets.gateway,
        egress=[
            netpol.NetworkPolicyEgressRuleArgs(
                to=[netpol.NetworkPolicyPeerArgs(pod_selector=_app(targets, app))], ports=_ports(*ports)
            )
            for app, ports in calls
        ],
    )
