"""Triton Inference Server on the GPU pool: one implementation for every cloud.

The server reads the model repository straight from the stack's bucket (`s3://`, `gs://`, `as://`),
authenticated by the cloud's workload identity that the platform bound to its service account, so no
key ever appears in a manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pulumi
import pulumi_kubernetes as k8s

from infra.platform.base import GpuScheduling, ReaderIdentity
from infra.settings import StackSettings
from infra.settings.fit import checkpoint_storage_gib
from infra.workload.autoscaling import triton_pods_service, triton_scaled_object
from infra.workload.monitoring import PROMETHEUS_URL

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
APP_LABEL = "app.kubernetes.io/name"
TRITON = "triton"
# A canary rollout's Triton (canary.version): its own Deployment and headless Service, pods labelled apart
# so that neither the stable Service nor its discovery name lists them.
TRITON_CANARY = "triton-canary"
TRITON_CANARY_PODS = "triton-canary-pods"


@dataclass(frozen=True)
class TritonArgs:
    """Everything the Triton component needs; the same for every cloud."""

    settings: StackSettings
    namespace: pulumi.Input[str]
    service_account: pulumi.Input[str]
    image: pulumi.Input[str]
    locator_image: pulumi.Input[str]  # has serving.model_locator (the gateway image)
    model_prefix: pulumi.Input[str]  # where uploads put versions/ and CURRENT
    scheduling: GpuScheduling
    reader: ReaderIdentity


def labels(name: str) -> dict[str, str]:
    return {APP_LABEL: name, "app.kubernetes.io/part-of": "tritonform"}


# The users the servers run as: high ids that no node account uses (docker/*/Dockerfile match them).
TRITON_UID, GATEWAY_UID = 10002, 10001


def pod_security_context(user: int) -> k8s.core.v1.PodSecurityContextArgs:
    """Pod-level Pod Security Standards 'restricted', with `user` owning the pod's volumes."""
    return k8s.core.v1.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=user,
        run_as_group=user,
        fs_group=user,
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def restricted_security_context(user: int, read_only_root: bool = False) -> k8s.core.v1.SecurityContextArgs:
    """Pod Security Standards 'restricted' for one container."""
    return k8s.core.v1.SecurityContextArgs(
        run_as_non_root=True,
        read_only_root_filesystem=read_only_root,
        run_as_user=user,
        allow_privilege_escalation=False,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


LOCATOR_MOUNT = "/var/run/tritonform"
MODELS_MOUNT = "/models"  # node-local copy of a TensorRT-LLM (llmapi) repository
TP_ENV = "TRITONFORM_TENSOR_PARALLEL_SIZE"  # read by model_repo/templates/tensorrt_llm/llmapi_model.py


def reader_env(
    reader: ReaderIdentity, extra: dict[str, str] | None = None
) -> pulumi.Output[list[k8s.core.v1.EnvVarArgs]]:
    """The environment the cloud's SDKs need to read the bucket as the reader identity (plus `extra`)."""
    return reader.env.apply(
        lambda env: [
            k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in sorted({**env, **(extra or {})}.items())
        ]
    )


def locator_container(
    image: pulumi.Input[str], reader: ReaderIdentity, command: list[pulumi.Input[str]]
) -> k8s.core.v1.ContainerArgs:
    """An init container running `python -m serving.model_locator ...` with the pod's cloud identity.

    It always names the version (`--version`, from `triton.modelVersion`): pods never pick one on their
    own, so a scale-out or a replaced node serves the same version as the pods beside it, and a new
    upload serves only once both Deployments are rolled to it together.
    """
    return k8s.core.v1.ContainerArgs(
        name="model-locator",
        image=image,
        command=["python", "-m", "serving.model_locator"],
        args=command,
        env=reader_env(reader),
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "50m", "memory": "128Mi"}, limits={"cpu": "500m", "memory": "256Mi"}
        ),
        security_context=restricted_security_context(user=GATEWAY_UID, read_only_root=True),
        volume_mounts=[k8s.core.v1.VolumeMountArgs(name="locator", mount_path=LOCATOR_MOUNT)],
    )


def disruption_budget(
    name: str, namespace: pulumi.Input[str], opts: pulumi.ResourceOptions
) -> k8s.policy.v1.PodDisruptionBudget:
    """At most one pod down at a time for voluntary disruptions (node drains, scale-down).

    With two or more replicas (prod's default for Triton) that keeps at least one serving, which is
    what `minAvailable: 1` would promise, and more once the autoscaler has added replicas.
    """
    return k8s.policy.v1.PodDisruptionBudget(
        name,
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=labels(name)),
        spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
            max_unavailable=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels={APP_LABEL: name})
        ),
        opts=opts,
    )


def spread(name: str) -> list[k8s.core.v1.TopologySpreadConstraintArgs]:
    """Spread replicas over nodes and zones, preferring but not requiring it (so scale-up never blocks)."""
    return [
        k8s.core.v1.TopologySpreadConstraintArgs(
            max_skew=1,
            topology_key=key,
            when_unsatisfiable="ScheduleAnyway",
            label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={APP_LABEL: name}),
        )
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]


class TritonServer(pulumi.ComponentResource):
    """Deployment, Service, PodDisruptionBudget and load-based autoscaler (KEDA) for Triton."""

    service_name: pulumi.Output[str]
    grpc_port: int = GRPC_PORT

    def __init__(self, name: str, args: TritonArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:workload:TritonServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        service = k8s.core.v1.Service(
            TRITON,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=TRITON, namespace=args.namespace, labels=labels(TRITON)),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector={APP_LABEL: TRITON},
                ports=[
                    k8s.core.v1.ServicePortArgs(name="http", port=HTTP_PORT, target_port="http"),
                    k8s.core.v1.ServicePortArgs(name="grpc", port=GRPC_PORT, target_port="grpc"),
                    k8s.core.v1.ServicePortArgs(name="metrics", port=METRICS_PORT, target_port="metrics"),
                ],
            ),
            opts=child,
        )
        triton_pods_service(args.namespace, {APP_LABEL: TRITON}, GRPC_PORT, labels(TRITON), child)
        # No version uploaded yet (a first `pulumi up`): no server, so nothing waits for a model and no
        # GPU node starts; `tritonform model upload --stack` sets the version and the next `up` rolls out.
        if args.settings.triton.model_version is not None:
            self._server(args, args.settings.triton.model_version, child)
        canary = args.settings.canary
        if canary.version is not None and args.settings.triton.model_version is not None:
            # The canary: pinned to its version, a fixed replica count, found by the gateway through its
            # own headless Service (serving/gateway/canary.py splits the traffic).
            triton_pods_service(
                args.namespace,
                {APP_LABEL: TRITON_CANARY},
                GRPC_PORT,
                labels(TRITON_CANARY),
                child,
                name=TRITON_CANARY_PODS,
            )
            self._server(args, canary.version, child, name=TRITON_CANARY, replicas=canary.replicas)
        self.service_name = service.metadata.name
        self.register_outputs({"service_name": self.service_name})

    def _server(
        self,
        args: TritonArgs,
        version: str,
        child: pulumi.ResourceOptions,
        name: str = TRITON,
        replicas: int | None = None,
    ) -> None:
        """Deployment, disruption budget and load-based autoscaler of the servers of `version` (`replicas`:
        a fixed count and no autoscaler, for a canary)."""
        t = args.settings.triton
        gpu = str(t.gpus_per_replica)
        # TensorRT-LLM's LLM API loads the checkpoint from local files: the init container syncs the
        # version to node-local storage sized for the model; ONNX repositories Triton reads from the bucket.
        llmapi = args.settings.model.backend == "tensorrt-llm"
        storage = f"{checkpoint_storage_gib(args.settings.model)}Gi"
        models_mount = k8s.core.v1.VolumeMountArgs(name="models", mount_path=MODELS_MOUNT)
        extra_env = {TP_ENV: gpu} if llmapi else {}
        health = "/v2/health/ready"
        container = k8s.core.v1.ContainerArgs(
            name=TRITON,  # the container keeps its name: `kubectl logs deploy/NAME -c triton` for both
            image=args.image,
            # The version's URI, checked and written by the init container.
            command=["/bin/sh", "-c"],
            args=[
                " ".join(
                    [
                        f'exec tritonserver --model-repository="$(cat {LOCATOR_MOUNT}/repository)"',
                        f"--http-port={HTTP_PORT}",
                        f"--grpc-port={GRPC_PORT}",
                        f"--metrics-port={METRICS_PORT}",
                        "--strict-readiness=true",
                        "--exit-on-error=true",
                        "--log-format=ISO8601",
                    ]
                )
            ],
            ports=[
                k8s.core.v1.ContainerPortArgs(name="http", container_port=HTTP_PORT),
                k8s.core.v1.ContainerPortArgs(name="grpc", container_port=GRPC_PORT),
                k8s.core.v1.ContainerPortArgs(name="metrics", container_port=METRICS_PORT),
            ],
            env=reader_env(args.reader, {"HOME": "/tmp", **extra_env}),
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={
                    "cpu": t.cpu_request,
                    "memory": t.memory_request,
                    args.scheduling.gpu_resource: gpu,
                    **({"ephemeral-storage": storage} if llmapi else {}),
                },
                limits={"cpu": t.cpu_limit, "memory": t.memory_limit, args.scheduling.gpu_resource: gpu},
            ),
            # Model loading from the bucket can take minutes: the startup probe allows 10, then the
            # readiness and liveness probes take over.
            startup_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path=health, port=HTTP_PORT),
                period_seconds=10,
                failure_threshold=60,
            ),
            readiness_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path=health, port=HTTP_PORT), period_seconds=5
            ),
            liveness_probe=k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path="/v2/health/live", port=HTTP_PORT),
                period_seconds=10,
                failure_threshold=3,
            ),
            # Triton writes only to its volumes (/tmp, /dev/shm); HOME points the caches there too.
            security_context=restricted_security_context(user=TRITON_UID, read_only_root=True),
            volume_mounts=[
                # The python backend passes tensors through shared memory; the default 64 MB is too small.
                k8s.core.v1.VolumeMountArgs(name="dshm", mount_path="/dev/shm"),
                k8s.core.v1.VolumeMountArgs(name="scratch", mount_path="/tmp"),
                k8s.core.v1.VolumeMountArgs(name="locator", mount_path=LOCATOR_MOUNT, read_only=True),
                *([models_mount] if llmapi else []),
            ],
        )
        locator = locator_container(
            args.locator_image,
            args.reader,
            [
                "sync" if llmapi else "resolve",
                "--prefix",
                args.model_prefix,
                "--version",
                version,
                *(["--dest", MODELS_MOUNT] if llmapi else []),
                "--out",
                f"{LOCATOR_MOUNT}/repository",
            ],
        )
        if llmapi:
            locator.volume_mounts = [*cast(list[Any], locator.volume_mounts or []), models_mount]
            # `sync` holds one file at a time in memory: Hugging Face shards weights at <= 5 GB.
            locator.resources = k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "500m", "memory": "1Gi"}, limits={"cpu": "2", "memory": "6Gi"}
            )
        pod_labels = {**labels(name), **args.reader.pod_labels}
        deployment = k8s.apps.v1.Deployment(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=args.namespace, labels=labels(name)),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=args.settings.triton_min_replicas if replicas is None else replicas,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels={APP_LABEL: name}),
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0),
                ),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=pod_labels,
                        annotations={
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(METRICS_PORT),
                            "prometheus.io/path": "/metrics",
                        },
                    ),
                    spec=k8s.core.v1.PodSpecArgs(
                        service_account_name=args.service_account,
                        # No Kubernetes API calls: the cloud identity brings its own projected token.
                        automount_service_account_token=False,
                        node_selector=args.scheduling.node_selector,
                        tolerations=[
                            k8s.core.v1.TolerationArgs(
                                key=tol.get("key"),
                                operator=tol.get("operator"),
                                effect=tol.get("effect"),
                                value=tol.get("value"),
                            )
                            for tol in args.scheduling.tolerations
                        ],
                        topology_spread_constraints=spread(name),
                        termination_grace_period_seconds=60,
                        security_context=pod_security_context(TRITON_UID),
                        init_containers=[locator],
                        containers=[container],
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="locator",
                                empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="16Mi"),
                            ),
                            k8s.core.v1.VolumeArgs(
                                name="dshm",
                                empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                                    medium="Memory", size_limit="4Gi" if llmapi else "1Gi"
                                ),
                            ),
                            k8s.core.v1.VolumeArgs(
                                name="scratch",
                                empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="20Gi"),
                            ),
                            *(
                                [
                                    k8s.core.v1.VolumeArgs(
                                        name="models",
                                        empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit=storage),
                                    )
                                ]
                                if llmapi
                                else []
                            ),
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(
                parent=self, ignore_changes=["spec.replicas"] if replicas is None else []
            ),
        )
        disruption_budget(name, args.namespace, child)
        if replicas is not None:
            return
        # Scale on inference load, not CPU, down to zero when minReplicas is 0: KEDA (see autoscaling.py).
        triton_scaled_object(
            TRITON,
            args.settings,
            args.namespace,
            deployment.metadata.name,
            PROMETHEUS_URL,
            labels(TRITON),
            child,
        )
