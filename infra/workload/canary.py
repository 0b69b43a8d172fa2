"""What a canary rollout adds to the gateway: its settings, the canary's tokenizer, and the least access to
record a rollback (one ConfigMap it may get and patch, nothing else in the Kubernetes API).

The canary's Triton Deployment itself comes from infra/workload/triton.py (`TRITON_CANARY`). The gateway
splits conversations between the two versions and rolls the canary back by itself
(serving/gateway/canary.py); the decision goes to the ConfigMap so that every gateway replica follows it,
and `tritonform model status` reads it back from the gateway. The ConfigMap's data belongs to the gateways
once created (`ignore_changes`), and a decision names the canary version it is about, so a later canary
starts afresh.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.settings import StackSettings

CANARY_CONFIGMAP = "tritonform-canary"
CANARY_TOKENIZER = "canary-model"  # under the locator mount: the canary version's tokenizer files
# Where the official Kubernetes client's in-cluster configuration looks for the token, CA and namespace.
API_TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
API_TOKEN_VOLUME = "kube-api-access"
TOKEN_SECONDS = 3600  # the kubelet renews the projected token before it expires


def canary_env(
    settings: StackSettings, namespace: pulumi.Input[str], discovery: pulumi.Input[str], tokenizer_dir: str
) -> list[k8s.core.v1.EnvVarArgs]:
    """The gateway's canary settings (serving/gateway/settings.py, `canary_*`)."""
    c, stable = settings.canary, settings.triton.model_version
    assert c.version is not None and stable is not None
    values: dict[str, pulumi.Input[str]] = {
        "CANARY_TRITON_DISCOVERY": discovery,
        "CANARY_TOKENIZER_DIR": tokenizer_dir,
        "CANARY_WEIGHT": str(c.weight),
        "STABLE_VERSION": stable,
        "CANARY_VERSION": c.version,
        "CANARY_WINDOW_S": str(c.window_seconds),
        "CANARY_MIN_REQUESTS": str(c.min_requests),
        "CANARY_MAX_ERROR_RATIO_INCREASE": str(c.max_error_ratio_increase),
        "CANARY_MAX_TTFT_P95_RATIO": str(c.max_ttft_p95_ratio),
        "CANARY_DECISION_CONFIGMAP": CANARY_CONFIGMAP,
        "CANARY_DECISION_NAMESPACE": namespace,
    }
    return [k8s.core.v1.EnvVarArgs(name=f"TRITONFORM_GATEWAY_{k}", value=v) for k, v in values.items()]


def api_token_volume() -> k8s.core.v1.VolumeArgs:
    """A short-lived, audience-bound service-account token with the cluster CA and the namespace: what the
    Kubernetes client needs in-cluster (the pod keeps `automountServiceAccountToken: false`)."""
    return k8s.core.v1.VolumeArgs(
        name=API_TOKEN_VOLUME,
        projected=k8s.core.v1.ProjectedVolumeSourceArgs(
            default_mode=0o444,
            sources=[
                k8s.core.v1.VolumeProjectionArgs(
                    service_account_token=k8s.core.v1.ServiceAccountTokenProjectionArgs(
                        path="token", expiration_seconds=TOKEN_SECONDS
                    )
                ),
                k8s.core.v1.VolumeProjectionArgs(
                    config_map=k8s.core.v1.ConfigMapProjectionArgs(
                        name="kube-root-ca.crt",
                        items=[k8s.core.v1.KeyToPathArgs(key="ca.crt", path="ca.crt")],
                    )
                ),
                k8s.core.v1.VolumeProjectionArgs(
                    downward_api=k8s.core.v1.DownwardAPIProjectionArgs(
                        items=[
                            k8s.core.v1.DownwardAPIVolumeFileArgs(
                                path="namespace",
                                field_ref=k8s.core.v1.ObjectFieldSelectorArgs(
                                    field_path="metadata.namespace"
                                ),
                            )
                        ]
                    )
                ),
            ],
        ),
    )


def api_token_mount() -> k8s.core.v1.VolumeMountArgs:
    return k8s.core.v1.VolumeMountArgs(name=API_TOKEN_VOLUME, mount_path=API_TOKEN_MOUNT, read_only=True)


def decision_access(
    namespace: pulumi.Input[str],
    service_account: pulumi.Input[str],
    labels: dict[str, str],
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.ConfigMap:
    """The decision ConfigMap, and a Role that lets the gateway's account get and patch it alone."""
    config_map = k8s.core.v1.ConfigMap(
        CANARY_CONFIGMAP,
        metadata=k8s.meta.v1.ObjectMetaArgs(name=CANARY_CONFIGMAP, namespace=namespace, labels=labels),
        data={},
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=["data"])),
    )
    role = k8s.rbac.v1.Role(
        "gateway-canary-decision",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name="gateway-canary-decision", namespace=namespace, labels=labels
        ),
        rules=[
            k8s.rbac.v1.PolicyRuleArgs(
                api_groups=[""],
                resources=["configmaps"],
                resource_names=[CANARY_CONFIGMAP],
                verbs=["get", "patch"],
            )
        ],
        opts=opts,
    )
    k8s.rbac.v1.RoleBinding(
        "gateway-canary-decision",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name="gateway-canary-decision", namespace=namespace, labels=labels
        ),
        role_ref=k8s.rbac.v1.RoleRefArgs(
            api_group="rbac.authorization.k8s.io", kind="Role", name=role.metadata.name
        ),
        subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=service_account, namespace=namespace)],
        opts=opts,
    )
    return config_map
