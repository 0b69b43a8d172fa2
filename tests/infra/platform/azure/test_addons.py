"""Azure add-ons (azure/addons.py): NVIDIA's device plugin on the GPU nodes, without NFD."""

from __future__ import annotations

from infra.offline import Plan


def test_device_plugin_schedules_on_gpu_nodes_without_nfd(dev: Plan) -> None:
    releases = [
        r.inputs
        for r in dev.of_type("kubernetes:helm.sh/v3:Release")
        if r.inputs["chart"] == "nvidia-device-plugin"
    ]
    assert len(releases) == 1
    release = releases[0]
    assert release["repositoryOpts"] == {"repo": "https://nvidia.github.io/k8s-device-plugin"}
    assert release["version"] == dev.settings.addons.device_plugin_version
    values = release["values"]
    assert values["gfd"] == {"enabled": False} and values["nfd"] == {"enabled": False}
    assert values["nodeSelector"] == {"tritonform.dev/pool": "gpu"}
    terms = values["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    # Only a label AKS GPU nodes really carry; none of the chart's NFD labels.
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "accelerator", "operator": "In", "values": ["nvidia"]}]}
    ]
    keys = {t["key"] for t in values["tolerations"]}
    assert {"nvidia.com/gpu", "kubernetes.azure.com/scalesetpriority"} <= keys  # dev is a Spot pool
    pool = dev.one("azure-native:containerservice:AgentPool").inputs
    assert pool["nodeLabels"]["accelerator"] == "nvidia"
