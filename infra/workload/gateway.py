"""The OpenAI-compatible gateway in front of Triton: one implementation for every cloud."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.platform.base import ReaderIdentity, ServiceExposure
from infra.settings import StackSettings
from infra.workload.autoscaling import TRITON_PODS
from infra.workload.canary import (
    CANARY_TOKENIZER,
    api_token_mount,
    api_token_volume,
    canary_env,
    decision_access,
)
from infra.workload.triton import (
    APP_LABEL,
    GATEWAY_UID,
    GRPC_PORT,
    LOCATOR_MOUNT,
    TRITON_CANARY_PODS,
    disruption_budget,
    labels,
    locator_container,
    pod_security_context,
    restricted_security_context,
    spread,
)

GATEWAY = "gateway"
GATEWAY_PORT = 8080
API_KEYS_SECRET = "gateway-api-keys"
PRE_STOP_S = 25  # > the edge's health-check window (~20 s); well inside the 120 s grace period
KEYS_MOUNT, KEYS_FILE = "/var/run/secrets/tritonform", "api-keys"  # the keys file the gateway reads


@dataclass(frozen=True)
class GatewayArgs:
    """Everything the gateway component needs; the same for every cloud."""

    settings: StackSettings
    namespace: pulumi.Input[str]
    service_account: pulumi.Input[str]
    image: pulumi.Input[str]
    triton_service: pulumi.Input[str]
    model_name: str
    api_keys: pulumi.Input[str]  # a Pulumi secret: comma-separated keys
    exposure: ServiceExposure
    model_prefix: pulumi.Input[str]  # where uploads put versions/ and CURRENT (for the tokenizer)
    reader: ReaderIdentity  # the gateway's own identity: it reads only the tokenizer files
    rate_limit_store_url: pulumi.Input[str]  # the store the replicas share per-key limits through


class Gateway(pulumi.ComponentResource):
    """Secret with the API keys, Deployment, Service (as the cloud exposes it), PDB and autoscaler."""

    service_name: pulumi.Output[str]
    port: int = GATEWAY_PORT

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:workload:Gateway", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        secret = k8s.core.v1.Secret(
            API_KEYS_SECRET,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=API_KEYS_SECRET, namespace=args.namespace, labels=labels(GATEWAY)
            ),
            type="Opaque",
            # One key per line: the gateway reads them from a mounted file, never from its environment.
            string_data={
                KEYS_FILE: pulumi.Output.secret(args.api_keys).apply(lambda keys: "\n".join(keys.split(",")))
            },
            opts=child,
        )
        exposure = args.exposure
        service = k8s.core.v1.Service(
            GATEWAY,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=GATEWAY,
                namespace=args.namespace,
                labels=labels(GATEWAY),
                annotations=exposure.annotations,
            ),
            spec=k8s.core.v1.ServiceSpecArgs(
                type=exposure.type,
                external_traffic_policy=exposure.external_traffic_policy,
                selector={APP_LABEL: GATEWAY},
                ports=[
                    k8s.core.v1.ServicePortArgs(
                        name="http", port=80, target_port="http", node_port=exposure.node_port
                    )
                ],
            ),
            opts=child,
        )
        # Like Triton, the gateway runs only once a version is set (see TritonServer).
        if args.settings.triton.model_version is not None:
            self._server(args, args.settings.triton.model_version, secret, child)
        self.service_name = service.metadata.name
        self.register_outputs({"service_name": self.service_name})

    def _server(
        self, args: GatewayArgs, version: str, secret: k8s.core.v1.Secret, child: pulumi.ResourceOptions
    ) -> None:
        """Deployment, disruption budget and CPU autoscaler of the gateways for `version`."""
        g = args.settings.gateway
        triton_url = pulumi.Output.concat(args.triton_service, ":", str(GRPC_PORT))
        # serving/gateway/settings.py reads TRITONFORM_GATEWAY_<FIELD>.
        env = [
            k8s.core.v1.EnvVarArgs(name="TRITONFORM_GATEWAY_TRITON_GRPC_URL", value=triton_url),
            k8s.core.v1.EnvVarArgs(name="TRITONFORM_GATEWAY_MODEL_NAME", value=args.model_name),
            k8s.core.v1.EnvVarArgs(
                name="TRITONFORM_GATEWAY_REQUESTS_PER_MINUTE", value=str(g.requests_per_minute)
            ),
            k8s.core.v1.EnvVarArgs(
                name="TRITONFORM_GATEWAY_TOKENS_PER_MINUTE", value=str(g.tokens_per_minute)
            ),
            k8s.core.v1.EnvVarArgs(
                name="TRITONFORM_GATEWAY_MAX_PROMPT_TOKENS", value=str(g.max_prompt_tokens)
            ),
            k8s.core.v1.EnvVarArgs(name="TRITONFORM_GATEWAY_MAX_TOKENS_CAP", value=str(g.max_tokens)),
            # Route each request to the Triton pod most likely to hold its prompt's prefix.
            k8s.core.v1.EnvVarArgs(
                name="TRITONFORM_GATEWAY_TRITON_DISCOVERY",
                value=pulumi.Output.concat(TRITON_PODS, ".", args.namespace, ".svc:", str(GRPC_PORT)),
            ),
            # Hold requests while no Triton replica is ready (scale from zero, a rollout): KEDA sees them.
            k8s.core.v1.EnvVarArgs(
                name="TRITONFORM_GATEWAY_COLD_START_TIMEOUT_S", value=str(g.cold_start_timeout_seconds)
            ),
            k8s.core.v1.EnvVarArgs(
                name="TRITONFORM_GATEWAY_MAX_HELD_REQUESTS", value=str(g.max_held_requests)
            ),
            k8s.core.v1.EnvVarArgs(
                name="TRITONFORM_GATEWAY_RATE_LIMIT_REDIS_URL", value=args.rate_limit_store_url
            ),
            k8s.core.v1.EnvVarArgs(name="TRITONFORM_GATEWAY_TOKENIZER_DIR", value=f"{LOCATOR_MOUNT}/model"),
            k8s.core.v1.EnvVarArgs(
                name="TRITONFORM_GATEWAY_API_KEYS_FILE", value=f"{KEYS_MOUNT}/{KEYS_FILE}"
            ),
        ]
        canary = args.settings.canary.version
        if canary is not None:
            # The canary's Triton pods, tokenizer, and its rollback decision (infra/workload/canary.py).
            discovery = pulumi.Output.concat(TRITON_CANARY_PODS, ".", args.namespace, ".svc:", str(GRPC_PORT))
            tokenizer = f"{LOCATOR_MOUNT}/{CANARY_TOKENIZER}"
            env += canary_env(args.settings, args.namespace, discovery, tokenizer)
            decision_access(args.namespace, args.service_account, labels(GATEWAY), child)
        container = k8s.core.v1.ContainerArgs(
            name=GATEWAY,
            image=args.image,
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=GATEWAY_PORT)],
            env=env,
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": g.cpu_request, "memory": g.memory_request},
                limits={"cpu": g.cpu_limit, "memory": g.memory_limit},
            ),
            readiness_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path="/readyz", port=GATEWAY_PORT), period_seconds=5
            ),
            liveness_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path="/healthz", port=GATEWAY_PORT), period_seconds=10
            ),
            security_context=restricted_security_context(user=GATEWAY_UID, read_only_root=True),
            # Keep serving while load balancers notice the pod is going: the cloud's health check takes
            # up to ~20 s to drop a node whose only gateway pod stops (externalTrafficPolicy: Local).
            lifecycle=k8s.core.v1.LifecycleArgs(
                pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                    sleep=k8s.core.v1.SleepActionArgs(seconds=PRE_STOP_S)
                )
            ),
            volume_mounts=[
                k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                k8s.core.v1.VolumeMountArgs(name="locator", mount_path=LOCATOR_MOUNT, read_only=True),
                k8s.core.v1.VolumeMountArgs(name="api-keys", mount_path=KEYS_MOUNT, read_only=True),
                *([api_token_mount()] if canary is not None else []),
            ],
        )
        locator = locator_container(
            args.image,
            args.reader,
            [
                "tokenizer",
                "--prefix",
                args.model_prefix,
                "--version",
                version,
                "--model",
                args.model_name,
                "--dest",
                f"{LOCATOR_MOUNT}/model",
            ],
        )
        locators = [locator]
        if canary is not None:
            canary_locator = locator_container(
                args.image,
                args.reader,
                [
                    "tokenizer",
                    "--prefix",
                    args.model_prefix,
                    "--version",
                    canary,
                    "--model",
                    args.model_name,
                    "--dest",
                    f"{LOCATOR_MOUNT}/{CANARY_TOKENIZER}",
                ],
            )
            canary_locator.name = "canary-model-locator"
            locators.append(canary_locator)
        deployment = k8s.apps.v1.Deployment(
            GATEWAY,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=GATEWAY, namespace=args.namespace, labels=labels(GATEWAY)
            ),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=g.min_replicas,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels={APP_LABEL: GATEWAY}),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels={**labels(GATEWAY), **args.reader.pod_labels},
                        annotations={
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(GATEWAY_PORT),
                            "prometheus.io/path": "/metrics",
                        },
                    ),
                    spec=k8s.core.v1.PodSpecArgs(
                        service_account_name=args.service_account,
                        # No Kubernetes API calls: the cloud identity brings its own projected token.
                        automount_service_account_token=False,
                        security_context=pod_security_context(GATEWAY_UID),
                        topology_spread_constraints=spread(GATEWAY),
                        # Long generations: give streams time to finish before the pod goes away.
                        termination_grace_period_seconds=120,
                        init_containers=locators,
                        containers=[container],
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="256Mi")
                            ),
                            k8s.core.v1.VolumeArgs(
                                name="locator",
                                empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="64Mi"),
                            ),
                            k8s.core.v1.VolumeArgs(
                                name="api-keys",
                                secret=k8s.core.v1.SecretVolumeSourceArgs(
                                    secret_name=secret.metadata.name, default_mode=0o400
                                ),
                            ),
                            *([api_token_volume()] if canary is not None else []),
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["spec.replicas"]),
        )
        disruption_budget(GATEWAY, args.namespace, child)
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            GATEWAY,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=GATEWAY, namespace=args.namespace, labels=labels(GATEWAY)
            ),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=deployment.metadata.name
                ),
                min_replicas=g.min_replicas,
                max_replicas=g.max_replicas,
                metrics=[
                    k8s.autoscaling.v2.MetricSpecArgs(
                        type="Resource",
                        resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                            name="cpu",
                            target=k8s.autoscaling.v2.MetricTargetArgs(
                                type="Utilization", average_utilization=70
                            ),
                        ),
                    )
                ],
            ),
            opts=child,
        )
