"""The store the gateway replicas share their per-key limits through: one small Valkey (Redis) pod.

Each gateway replica keeps a token bucket per API key in it (one atomic script on the server's clock,
serving/gateway/shared_limits.py), so `gateway.requestsPerMinute` and `tokensPerMinute` hold for the
stack, not for each of its 2-6 replicas. It keeps nothing worth saving (buckets refill within a
minute): no persistence, a small memory cap, and when it is down each replica enforces the limits on
its own until it is back. Only the gateway may reach it (infra/workload/network_policies.py), so it runs
without a password, on the system nodes, as a non-root user with a read-only root.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.workload.triton import APP_LABEL, labels, pod_security_context, restricted_security_context

RATE_LIMITS = "rate-limits"
RATE_LIMITS_PORT = 6379
RATE_LIMITS_UID = 10003
# Counters only: no snapshot or log on disk, a memory cap that evicts the buckets nearest their expiry,
# and reachable from other pods (the network policy admits only the gateway).
SERVER_FLAGS: tuple[str, ...] = ("--save", "", "--appendonly", "no", "--protected-mode", "no")
SERVER_FLAGS += ("--maxmemory", "64mb", "--maxmemory-policy", "volatile-ttl")
# checkov wants images pinned by digest; a public image's digest cannot be looked up offline, so the
# default is a version tag and the setting takes a digest (gateway.rateLimitStoreImage).
_DIGEST_SKIP = "CKV_K8S_43=the public Valkey image is pinned by version tag; set gateway.rateLimitStoreImage"


def store_url(namespace: pulumi.Input[str]) -> pulumi.Output[str]:
    """The URL the gateway's `rate_limit_redis_url` setting takes."""
    return pulumi.Output.concat(
        "redis://", RATE_LIMITS, ".", namespace, ".svc.cluster.local:", str(RATE_LIMITS_PORT), "/0"
    )


class RateLimitStore(pulumi.ComponentResource):
    """A one-replica Valkey Deployment and its ClusterIP Service in the workload's namespace."""

    def __init__(
        self, name: str, namespace: pulumi.Input[str], image: str, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tritonform:workload:RateLimitStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        port = k8s.core.v1.ContainerPortArgs(name="redis", container_port=RATE_LIMITS_PORT)
        probe = k8s.core.v1.ProbeArgs(
            tcp_socket=k8s.core.v1.TCPSocketActionArgs(port=RATE_LIMITS_PORT), period_seconds=10
        )
        server = k8s.core.v1.ContainerArgs(
            name=RATE_LIMITS,
            image=image,
            image_pull_policy="Always",  # a tag, not a digest: always the registry's current image of it
            command=["valkey-server"],
            args=[*SERVER_FLAGS, "--port", str(RATE_LIMITS_PORT)],
            ports=[port],
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "50m", "memory": "64Mi"}, limits={"cpu": "500m", "memory": "128Mi"}
            ),
            readiness_probe=probe,
            liveness_probe=probe,
            security_context=restricted_security_context(user=RATE_LIMITS_UID, read_only_root=True),
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="data", mount_path="/data")],
        )
        k8s.apps.v1.Deployment(
            RATE_LIMITS,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=RATE_LIMITS,
                namespace=namespace,
                labels=labels(RATE_LIMITS),
                annotations={"checkov.io/skip1": _DIGEST_SKIP},
            ),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels={APP_LABEL: RATE_LIMITS}),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels(RATE_LIMITS)),
                    spec=k8s.core.v1.PodSpecArgs(
                        automount_service_account_token=False,
                        security_context=pod_security_context(RATE_LIMITS_UID),
                        containers=[server],
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="data", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="64Mi")
                            )
                        ],
                    ),
                ),
            ),
            opts=child,
        )
        k8s.core.v1.Service(
            RATE_LIMITS,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=RATE_LIMITS, namespace=namespace, labels=labels(RATE_LIMITS)
            ),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector={APP_LABEL: RATE_LIMITS},
                ports=[k8s.core.v1.ServicePortArgs(name="redis", port=RATE_LIMITS_PORT, target_port="redis")],
            ),
            opts=child,
        )
        self.register_outputs({})
