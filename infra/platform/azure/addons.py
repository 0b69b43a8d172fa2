"""AKS GPU enablement: AKS installs the NVIDIA driver on GPU pools, but not the device plugin.

NVIDIA's chart requires, by default, a node label that only Node Feature Discovery (or GPU Feature
Discovery) sets (`feature.node.kubernetes.io/pci-10de.present`, `nvidia.com/gpu.present`); without NFD
its DaemonSet never schedules. AKS labels GPU nodes `accelerator=nvidia`, and our pools carry our own
pool label, so the chart's required affinity is replaced by that label instead of installing NFD.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.platform.azure.cluster import AzureCluster, AzureGpuPool
from infra.platform.azure.provider import AzureContext
from infra.platform.base import GpuScheduling

DEVICE_PLUGIN_REPO = "https://nvidia.github.io/k8s-device-plugin"
DEVICE_PLUGIN_CHART = "nvidia-device-plugin"
DEVICE_PLUGIN_NAMESPACE = "kube-system"
AKS_GPU_LABEL = ("accelerator", "nvidia")


def device_plugin_values(scheduling: GpuScheduling) -> dict[str, Any]:
    """Chart values: only on our GPU nodes, tolerating their taints, no NFD/GFD."""
    key, value = AKS_GPU_LABEL
    return {
        "nodeSelector": dict(scheduling.node_selector),
        # Helm replaces lists, so these terms replace the chart's NFD-label terms entirely.
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}
                    ]
                }
            }
        },
        "tolerations": [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            *(
                dict(toleration) for toleration in scheduling.tolerations
            ),  # the GPU taint, and the Spot taint on Spot pools
        ],
        "gfd": {"enabled": False},
        "nfd": {"enabled": False},
        "priorityClassName": "system-node-critical",
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "200m", "memory": "256Mi"},
        },
    }


def install_gpu_addons(context: AzureContext, cluster: AzureCluster, gpu_pool: AzureGpuPool) -> None:
    """NVIDIA's device plugin DaemonSet (a Helm release, so upgrades and hooks run as Helm intends)."""
    k8s.helm.v3.Release(
        context.name("nvidia-device-plugin"),
        name=DEVICE_PLUGIN_CHART,
        chart=DEVICE_PLUGIN_CHART,
        version=context.settings.addons.device_plugin_version,
        namespace=DEVICE_PLUGIN_NAMESPACE,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=DEVICE_PLUGIN_REPO),
        values=device_plugin_values(gpu_pool.component.scheduling),
        atomic=True,
        opts=pulumi.ResourceOptions(
            parent=gpu_pool.component, provider=cluster.component.provider, depends_on=[gpu_pool.agent_pool]
        ),
    )
