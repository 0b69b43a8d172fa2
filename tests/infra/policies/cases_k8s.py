"""Violating and passing inputs for the Kubernetes and public-entry rules (one pair per case)."""

from __future__ import annotations

from typing import Any

from tests.infra.policies.factories import (
    CONFIGMAP,
    SERVICE,
    container,
    deployment,
    gpu_container,
    pod_spec,
    res,
    stack,
)

TRITON = deployment(pod_spec(gpu_container(), gpu=True))
GATEWAY = deployment(pod_spec(container("gateway")), name="gateway")
PINNED_NO_GPU = deployment(pod_spec(container("triton"), gpu=True))
DEVICE_PLUGIN = deployment(
    pod_spec(container("plugin"), gpu=True), "nvidia-device-plugin", "kubernetes:apps/v1:DaemonSet"
)
GPU_REQUEST_ONLY = deployment(
    pod_spec(
        container(
            "triton",
            resources={
                "requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": 1},
                "limits": {"memory": "1Gi"},
            },
        ),
        gpu=True,
    )
)
UNTOLERATED = deployment(pod_spec(gpu_container()))
NO_REQUESTS = deployment(pod_spec(container(resources={"limits": {"memory": "1Gi"}})))
INIT_NO_LIMITS = deployment(
    pod_spec(
        container(),
        initContainers=[container("fetch", resources={"requests": {"cpu": "100m", "memory": "64Mi"}})],
    )
)
JOB = res(
    "kubernetes:batch/v1:CronJob",
    "warmup",
    spec={"jobTemplate": {"spec": {"template": {"spec": pod_spec(container(resources={}))}}}},
)
JOB_OK = res(
    "kubernetes:batch/v1:CronJob",
    "warmup",
    spec={"jobTemplate": {"spec": {"template": {"spec": pod_spec()}}}},
)


def env(*pairs: dict[str, Any]) -> Any:
    return deployment(pod_spec(container("gateway", env=list(pairs))), name="gateway")


SECRET_REF = {
    "name": "GATEWAY_API_KEYS",
    "valueFrom": {"secretKeyRef": {"name": "gateway-keys", "key": "keys"}},
}
HARMLESS_ENV = env(
    {"name": "TOKENIZER_DIR", "value": "/models/tokenizer"},
    {"name": "MAX_TOKENS", "value": "512"},
    {"name": "API_KEY_HEADER", "value": "Authorization"},
    {"name": "AWS_REGION", "value": "us-east-1"},
    SECRET_REF,
)
CONFIG = res(
    CONFIGMAP,
    "gateway-config",
    data={
        "gateway.yaml": "triton_url: http://triton:8000\nmax_tokens: 512\napi_key_header: Authorization\n",
        "LOG_LEVEL": "info",
    },
)

LB = res(
    SERVICE, "gateway", metadata={"name": "gateway"}, spec={"type": "LoadBalancer", "ports": [{"port": 80}]}
)


def lb(**annotations: str) -> Any:
    return res(
        SERVICE,
        "gateway",
        metadata={"name": "gateway", "annotations": annotations},
        spec=dict(LB.props["spec"]),
    )


AWS_INTERNAL = {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}
AZURE_INTERNAL = {"service.beta.kubernetes.io/azure-load-balancer-internal": "true"}
GCP_INTERNAL = {"networking.gke.io/load-balancer-type": "Internal"}
GATEWAY_API = "kubernetes:gateway.networking.k8s.io/v1:Gateway"
EDGE = res(GATEWAY_API, "edge", spec={"gatewayClassName": "gke-l7-global-external-managed"})
ARMOR = res(
    "kubernetes:networking.gke.io/v1:GCPBackendPolicy",
    "edge",
    spec={"targetRef": {"kind": "Service", "name": "gateway"}, "default": {"securityPolicy": "armor"}},
)
PIP = res("azure-native:network:PublicIPAddress", "tf-dev-apim-ip")
APIM = res(
    "azure-native:apimanagement:ApiManagementService",
    "tf-dev-apim",
    publicIpAddressId="/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/tf-dev-apim-ip",
)

# (case id, rule, violating input, passing input)
CASES: list[tuple[str, str, Any, Any]] = [
    ("pinned-without-gpu", "gpu-pods-request-gpus", PINNED_NO_GPU, TRITON),
    ("gpu-request-without-limit", "gpu-pods-request-gpus", GPU_REQUEST_ONLY, TRITON),
    ("daemonset-on-gpu-nodes", "gpu-pods-request-gpus", PINNED_NO_GPU, DEVICE_PLUGIN),
    ("gpu-without-toleration", "gpu-pods-tolerate-gpu-taint", UNTOLERATED, TRITON),
    (
        "gpu-wrong-toleration",
        "gpu-pods-tolerate-gpu-taint",
        deployment(
            pod_spec(
                gpu_container(), tolerations=[{"key": "nvidia.com/gpu", "operator": "Equal", "value": "x"}]
            )
        ),
        deployment(pod_spec(gpu_container(), tolerations=[{"operator": "Exists"}])),
    ),
    ("no-requests", "containers-have-resources", NO_REQUESTS, GATEWAY),
    ("init-container-no-limits", "containers-have-resources", INIT_NO_LIMITS, TRITON),
    ("cronjob-no-resources", "containers-have-resources", JOB, JOB_OK),
    (
        "literal-api-key",
        "no-plaintext-secrets",
        env({"name": "OPENAI_API_KEY", "value": "sk-live-123"}),
        HARMLESS_ENV,
    ),
    (
        "camel-case-password",
        "no-plaintext-secrets",
        env({"name": "dbPassword", "value": "hunter2"}),
        HARMLESS_ENV,
    ),
    (
        "inlined-pulumi-secret",
        "no-plaintext-secrets",
        env({"name": "GATEWAY_CONFIG", "value": "[secret]"}),
        env(SECRET_REF),
    ),
    (
        "secret-in-args",
        "no-plaintext-secrets",
        deployment(pod_spec(container(args=["--api-key", "[secret]"]))),
        deployment(pod_spec(container(args=["--port", "80"]))),
    ),
    ("configmap-key", "no-plaintext-secrets", res(CONFIGMAP, "c", data={"HF_TOKEN": "hf_abcdef"}), CONFIG),
    (
        "configmap-file",
        "no-plaintext-secrets",
        res(CONFIGMAP, "c", data={"gateway.yaml": "triton_url: http://triton:8000\napi_keys: sk-1,sk-2\n"}),
        CONFIG,
    ),
    (
        "configmap-secret-value",
        "no-plaintext-secrets",
        res(CONFIGMAP, "c", data={"config.json": "[secret]"}),
        CONFIG,
    ),
    (
        "public-lb-aws",
        "only-public-entry-is-api-gateway",
        stack(LB, cloud="aws"),
        stack(lb(**AWS_INTERNAL), cloud="aws"),
    ),
    (
        "aws-annotation-on-azure",
        "only-public-entry-is-api-gateway",
        stack(lb(**AWS_INTERNAL), cloud="azure"),
        stack(lb(**AZURE_INTERNAL), cloud="azure"),
    ),
    (
        "public-lb-gcp",
        "only-public-entry-is-api-gateway",
        stack(LB, cloud="gcp"),
        stack(lb(**GCP_INTERNAL), cloud="gcp"),
    ),
    (
        "public-ingress",
        "only-public-entry-is-api-gateway",
        stack(res("kubernetes:networking.k8s.io/v1:Ingress", "gw", spec={})),
        stack(
            res("kubernetes:networking.k8s.io/v1:Ingress", "gw", spec={"ingressClassName": "gce-internal"})
        ),
    ),
    (
        "external-gateway-off-gcp",
        "only-public-entry-is-api-gateway",
        stack(EDGE, cloud="aws"),
        stack(EDGE, ARMOR, cloud="gcp"),
    ),
    (
        "gke-gateway-without-cloud-armor",
        "only-public-entry-is-api-gateway",
        stack(EDGE, cloud="gcp"),
        stack(EDGE, ARMOR, cloud="gcp"),
    ),
    (
        "internet-facing-nlb",
        "only-public-entry-is-api-gateway",
        stack(res("aws:lb/loadBalancer:LoadBalancer", "nlb", loadBalancerType="network")),
        stack(res("aws:lb/loadBalancer:LoadBalancer", "nlb", loadBalancerType="network", internal=True)),
    ),
    (
        "eip-on-instance",
        "only-public-entry-is-api-gateway",
        stack(res("aws:ec2/eip:Eip", "x", domain="vpc", instance="i-123")),
        stack(res("aws:ec2/eip:Eip", "nat", domain="vpc")),
    ),
    (
        "ssh-open-node-group",
        "only-public-entry-is-api-gateway",
        stack(res("aws:eks/nodeGroup:NodeGroup", "g", remoteAccess={"ec2SshKey": "k"})),
        stack(
            res(
                "aws:eks/nodeGroup:NodeGroup",
                "g",
                remoteAccess={"ec2SshKey": "k", "sourceSecurityGroupIds": ["sg-1"]},
            )
        ),
    ),
    (
        "gke-public-nodes",
        "only-public-entry-is-api-gateway",
        stack(
            res("gcp:container/cluster:Cluster", "gke", privateClusterConfig={"enablePrivateNodes": False})
        ),
        stack(res("gcp:container/cluster:Cluster", "gke", privateClusterConfig={"enablePrivateNodes": True})),
    ),
    (
        "gcp-external-address",
        "only-public-entry-is-api-gateway",
        stack(res("gcp:compute/address:Address", "ip")),
        stack(res("gcp:compute/address:Address", "ip", addressType="INTERNAL")),
    ),
    (
        "gcp-world-firewall",
        "only-public-entry-is-api-gateway",
        stack(res("gcp:compute/firewall:Firewall", "fw", sourceRanges=["0.0.0.0/0"])),
        stack(res("gcp:compute/firewall:Firewall", "fw", sourceRanges=["35.191.0.0/16", "130.211.0.0/22"])),
    ),
    ("azure-stray-public-ip", "only-public-entry-is-api-gateway", stack(PIP), stack(PIP, APIM)),
    (
        "aks-node-public-ip",
        "only-public-entry-is-api-gateway",
        stack(res("azure-native:containerservice:AgentPool", "gpu", enableNodePublicIP=True)),
        stack(res("azure-native:containerservice:AgentPool", "gpu", enableNodePublicIP=False)),
    ),
]
