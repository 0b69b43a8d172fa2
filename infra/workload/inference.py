"""`InferenceWorkload`: namespace, identities, network policies, monitoring, Triton and the gateway.

It takes the neutral outputs of a cloud platform (the cluster's provider, GPU scheduling, the bucket URI,
the reader identity, how the gateway is exposed) and never asks which cloud it is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.platform.base import GpuScheduling, ReaderIdentity, ServiceExposure
from infra.settings import StackSettings
from infra.workload.gateway import GATEWAY, GATEWAY_PORT, Gateway, GatewayArgs
from infra.workload.monitoring import MONITORING_NAMESPACE, Monitoring
from infra.workload.triton import (
    APP_LABEL,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    TRITON,
    TritonArgs,
    TritonServer,
)

MODEL_NAME = "llm"  # the name the model repository's generation model is served under


@dataclass(frozen=True)
class WorkloadArgs:
    """The neutral inputs of the workload."""

    settings: StackSettings
    provider: pulumi.ProviderResource
    scheduling: GpuScheduling
    reader: ReaderIdentity
    bucket_uri: pulumi.Input[str]
    triton_image: pulumi.Input[str]
    gateway_image: pulumi.Input[str]
    api_keys: pulumi.Input[str]
    exposure: ServiceExposure


class InferenceWorkload(pulumi.ComponentResource):
    """Namespace, identities, network policies, monitoring, Triton and the gateway on one cluster."""

    namespace: pulumi.Output[str]
    gateway_service: pulumi.Output[str]
    gateway_port: int = 80

    def __init__(self, name: str, args: WorkloadArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            "tritonform:workload:InferenceWorkload",
            name,
            None,
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(providers={"kubernetes": args.provider})
            ),
        )
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        ns_name = s.workload.namespace
        namespace = k8s.core.v1.Namespace(
            ns_name,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=ns_name,
                labels={
                    # Enforce the baseline pod security standard; warn and audit against restricted.
                    "pod-security.kubernetes.io/enforce": "baseline",
                    "pod-security.kubernetes.io/warn": "restricted",
                    "pod-security.kubernetes.io/audit": "restricted",
                },
            ),
            opts=child,
        )
        ns = namespace.metadata.name
        triton_sa = k8s.core.v1.ServiceAccount(
            s.workload.triton_service_account,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=s.workload.triton_service_account,
                namespace=ns,
                annotations=args.reader.service_account_annotations,
            ),
            automount_service_account_token=True,  # the cloud identity exchanges this token
            opts=child,
        )
        model_prefix = pulumi.Output.concat(args.bucket_uri, "/", s.triton.model_prefix)
        monitoring = Monitoring("monitoring", s, opts=child)
        triton = TritonServer(
            "triton",
            TritonArgs(
                settings=s,
                namespace=ns,
                service_account=triton_sa.metadata.name,
                image=args.triton_image,
                locator_image=args.gateway_image,
                model_prefix=model_prefix,
                scheduling=args.scheduling,
                reader=args.reader,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[monitoring]),
        )
        gateway = Gateway(
            "gateway",
            GatewayArgs(
                settings=s,
                namespace=ns,
                # The model reader identity: the gateway reads only the tokenizer files with it.
                service_account=triton_sa.metadata.name,
                image=args.gateway_image,
                triton_service=triton.service_name,
                model_name=MODEL_NAME,
                api_keys=args.api_keys,
                exposure=args.exposure,
                model_prefix=model_prefix,
                reader=args.reader,
            ),
            opts=child,
        )
        self._network_policies(ns, args.exposure, child)
        self.namespace = ns
        self.gateway_service = gateway.service_name
        self.register_outputs({"namespace": ns, "gateway_service": gateway.service_name})

    def _network_policies(
        self, ns: pulumi.Input[str], exposure: ServiceExposure, opts: pulumi.ResourceOptions
    ) -> None:
        """Default deny; only the gateway reaches Triton; only the monitoring namespace scrapes metrics."""
        netpol = k8s.networking.v1
        monitoring_peer = netpol.NetworkPolicyPeerArgs(
            namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                match_labels={"kubernetes.io/metadata.name": MONITORING_NAMESPACE}
            )
        )

        def policy(name: str, app: str | None, ingress: list[netpol.NetworkPolicyIngressRuleArgs]) -> None:
            netpol.NetworkPolicy(
                name,
                metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=ns),
                spec=netpol.NetworkPolicySpecArgs(
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={APP_LABEL: app})
                    if app
                    else k8s.meta.v1.LabelSelectorArgs(),  # every pod in the namespace
                    policy_types=["Ingress"],
                    ingress=ingress,
                ),
                opts=opts,
            )

        policy("default-deny-ingress", None, [])
        policy(
            "triton-from-gateway",
            TRITON,
            [
                netpol.NetworkPolicyIngressRuleArgs(
                    from_=[
                        netpol.NetworkPolicyPeerArgs(
                            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={APP_LABEL: GATEWAY})
                        )
                    ],
                    ports=[
                        netpol.NetworkPolicyPortArgs(port=GRPC_PORT, protocol="TCP"),
                        netpol.NetworkPolicyPortArgs(port=HTTP_PORT, protocol="TCP"),
                    ],
                ),
                netpol.NetworkPolicyIngressRuleArgs(
                    from_=[monitoring_peer],
                    ports=[netpol.NetworkPolicyPortArgs(port=METRICS_PORT, protocol="TCP")],
                ),
            ],
        )
        # The gateway takes traffic only from where the cloud's edge connects from.
        policy(
            "gateway-from-edge",
            GATEWAY,
            [
                netpol.NetworkPolicyIngressRuleArgs(
                    from_=[
                        *(
                            netpol.NetworkPolicyPeerArgs(ip_block=netpol.IPBlockArgs(cidr=cidr))
                            for cidr in exposure.source_ranges
                        ),
                        monitoring_peer,  # scrapes /metrics on the same port
                    ],
                    ports=[netpol.NetworkPolicyPortArgs(port=GATEWAY_PORT, protocol="TCP")],
                )
            ],
        )
