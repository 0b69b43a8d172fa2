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
from infra.workload.gpu_observability import DcgmExporter
from infra.workload.monitoring import MONITORING_NAMESPACE, Monitoring
from infra.workload.network_policies import PolicyTargets, network_policies
from infra.workload.rate_limit_store import RATE_LIMITS, RATE_LIMITS_PORT, RateLimitStore, store_url
from infra.workload.training_job import TRAINING_APP
from infra.workload.triton import (
    APP_LABEL,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    TRITON,
    TRITON_CANARY,
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
    reader: ReaderIdentity  # Triton's: reads the whole model bucket
    gateway_reader: ReaderIdentity  # the gateway's: reads only the tokenizer files
    bucket_uri: pulumi.Input[str]
    triton_image: pulumi.Input[str]
    gateway_image: pulumi.Input[str]
    api_keys: pulumi.Input[str]
    exposure: ServiceExposure
    # Training Jobs' identity (reads datasets/, writes checkpoints/); its service account is made here
    trainer: ReaderIdentity | None = None


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
                    # Pod Security Standards: every pod here must meet `restricted` to be admitted.
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/warn": "restricted",
                    "pod-security.kubernetes.io/audit": "restricted",
                },
            ),
            opts=child,
        )
        ns = namespace.metadata.name
        # Each server has its own account, bound to its own cloud identity. Neither calls the Kubernetes
        # API, so no API token is mounted: the clouds' identity webhooks (EKS, AKS) project their own
        # audience-bound token, and GKE's metadata server needs none.
        triton_sa, gateway_sa = (
            k8s.core.v1.ServiceAccount(
                account,
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=account, namespace=ns, annotations=reader.service_account_annotations
                ),
                automount_service_account_token=False,
                opts=child,
            )
            for account, reader in (
                (s.workload.triton_service_account, args.reader),
                (s.workload.gateway_service_account, args.gateway_reader),
            )
        )
        if args.trainer is not None:
            # training Jobs (infra/workload/training_job.py) run as this account; it is bound to the
            # trainer identity and, like the servers', mounts no Kubernetes API token
            k8s.core.v1.ServiceAccount(
                s.workload.trainer_service_account,
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=s.workload.trainer_service_account,
                    namespace=ns,
                    annotations=args.trainer.service_account_annotations,
                ),
                automount_service_account_token=False,
                opts=child,
            )
        model_prefix = pulumi.Output.concat(args.bucket_uri, "/", s.triton.model_prefix)
        monitoring = Monitoring("monitoring", s, opts=child)
        DcgmExporter(
            "gpu-metrics",
            s,
            args.scheduling,
            MONITORING_NAMESPACE,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[monitoring]),
        )
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
        # The store the gateway replicas share per-key limits through; it runs with the gateway.
        serving = s.triton.model_version is not None
        if serving:
            RateLimitStore("rate-limits", ns, s.gateway.rate_limit_store_image, opts=child)
        gateway = Gateway(
            "gateway",
            GatewayArgs(
                settings=s,
                namespace=ns,
                service_account=gateway_sa.metadata.name,
                image=args.gateway_image,
                triton_service=triton.service_name,
                model_name=MODEL_NAME,
                api_keys=args.api_keys,
                exposure=args.exposure,
                model_prefix=model_prefix,
                reader=args.gateway_reader,
                rate_limit_store_url=store_url(ns),
            ),
            opts=child,
        )
        network_policies(
            PolicyTargets(
                namespace=ns,
                app_label=APP_LABEL,
                triton=TRITON,
                gateway=GATEWAY,
                triton_ports=(GRPC_PORT, HTTP_PORT),
                metrics_port=METRICS_PORT,
                gateway_port=GATEWAY_PORT,
                monitoring_namespace=MONITORING_NAMESPACE,
                exposure=args.exposure,
                identity_egress=tuple(
                    dict.fromkeys(
                        (
                            *args.reader.egress,
                            *args.gateway_reader.egress,
                            *(args.trainer.egress if args.trainer is not None else ()),
                        )
                    )
                ),
                training=TRAINING_APP if args.trainer is not None else None,
                extra_gateway_egress=((RATE_LIMITS, RATE_LIMITS_PORT),) if serving else (),
                triton_canary=TRITON_CANARY if serving and s.canary.version is not None else None,
            ),
            child,
        )
        self.namespace = ns
        self.gateway_service = gateway.service_name
        self.register_outputs({"namespace": ns, "gateway_service": gateway.service_name})
