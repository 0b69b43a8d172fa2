"""Triton's load-based autoscaler: a KEDA `ScaledObject`, down to zero replicas when idle.

Why KEDA's Prometheus scaler and not its metrics-api scaler against the gateway: the load to scale on is
spread over every gateway replica (each holds its own requests while Triton is cold), and a metrics-api
trigger reads one URL, i.e. one gateway pod behind the Service; Prometheus already scrapes every pod, so
one query sums them all. The scaler's activation (`activationThreshold: 0`) takes Triton from 0 to 1 as
soon as one request is held; `threshold` then sets replicas by generations per replica, as the HPA did.
The Prometheus scrape interval adds up to a minute to a cold start, small beside a GPU node's start.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.settings import StackSettings

# The gateway's gauges (serving/gateway/observability.py), summed over gateway pods.
INFLIGHT_METRIC = "tritonform_gateway_generations_in_flight"
HELD_METRIC = "tritonform_gateway_requests_held"
SCALED_OBJECT_API = "keda.sh/v1alpha1"
POLLING_INTERVAL_S = 15
# GPU nodes take minutes to arrive; scale down slowly so a lull does not thrash them.
SCALE_DOWN_WINDOW_S = 600


def load_query(namespace: str) -> str:
    """PromQL: generations in flight plus requests held, over every gateway pod of `namespace` (0 when the
    gateway has not been scraped yet, so the query never returns an empty vector)."""
    parts = [f'(sum({m}{{namespace="{namespace}"}}) or vector(0))' for m in (INFLIGHT_METRIC, HELD_METRIC)]
    return " + ".join(parts)


def scaled_object_spec(settings: StackSettings, deployment: str, prometheus_url: str) -> dict[str, object]:
    """The ScaledObject's spec for Triton's Deployment `deployment` (plain data, tested on its own)."""
    t = settings.triton
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicaCount": settings.triton_min_replicas,
        "maxReplicaCount": t.max_replicas,
        "pollingInterval": POLLING_INTERVAL_S,
        # Only the last step, from 1 to 0, waits this long; other scale-downs follow the HPA behaviour.
        "cooldownPeriod": t.scale_to_zero_after_seconds,
        "advanced": {
            "horizontalPodAutoscalerConfig": {
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S}}
            }
        },
        "triggers": [
            {
                "type": "prometheus",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": prometheus_url,
                    "query": load_query(settings.workload.namespace),
                    "threshold": str(t.target_inflight_requests),
                    "activationThreshold": "0",
                    # A lost Prometheus target is an error (KEDA keeps the replicas), never a silent 0.
                    "ignoreNullValues": "false",
                },
            }
        ],
    }


# A headless Service over Triton's ready pods: its DNS name lists each pod, so the gateway routes every
# request to the replica most likely to hold its prompt's prefix (serving/gateway/replicas.py).
TRITON_PODS = "triton-pods"


def triton_pods_service(
    namespace: pulumi.Input[str],
    selector: dict[str, str],
    grpc_port: int,
    labels: dict[str, str],
    opts: pulumi.ResourceOptions,
    name: str = TRITON_PODS,
) -> k8s.core.v1.Service:
    """The headless Service the gateway's prefix-aware router discovers Triton's replicas through."""
    return k8s.core.v1.Service(
        name,
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=labels),
        spec=k8s.core.v1.ServiceSpecArgs(
            type="ClusterIP",
            cluster_ip="None",
            selector=selector,
            ports=[k8s.core.v1.ServicePortArgs(name="grpc", port=grpc_port, target_port="grpc")],
        ),
        opts=opts,
    )


def triton_scaled_object(
    name: str,
    settings: StackSettings,
    namespace: pulumi.Input[str],
    deployment: pulumi.Input[str],
    prometheus_url: str,
    labels: dict[str, str],
    opts: pulumi.ResourceOptions,
) -> k8s.apiextensions.CustomResource:
    """The KEDA ScaledObject that owns Triton's replica count (KEDA creates the HPA behind it)."""
    return k8s.apiextensions.CustomResource(
        name,
        api_version=SCALED_OBJECT_API,
        kind="ScaledObject",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=labels),
        spec=pulumi.Output.from_input(deployment).apply(
            lambda target: scaled_object_spec(settings, target, prometheus_url)
        ),
        opts=opts,
    )
