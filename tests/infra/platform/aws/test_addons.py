"""AWS add-ons (aws/addons.py): NVIDIA's device plugin and the cluster autoscaler with its IRSA role."""

from __future__ import annotations

import json

from infra.offline import Plan


def test_device_plugin_runs_on_gpu_nodes_only(dev: Plan) -> None:
    (plugin,) = [
        r for r in dev.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "nvidia-device-plugin"
    ]
    values = plugin.inputs["values"]
    assert plugin.inputs["version"] == dev.settings.addons.device_plugin_version
    assert values["nodeSelector"] == {"tritonform.dev/pool": "gpu"}
    assert values["tolerations"][0]["key"] == "nvidia.com/gpu"
    gpu_group = dev.one("aws:eks/nodeGroup:NodeGroup", "tf-dev-gpu").inputs
    assert gpu_group["labels"]["nvidia.com/gpu.present"] == "true"  # the chart's required affinity


def test_cluster_autoscaler_may_only_resize_this_clusters_groups(dev: Plan) -> None:
    (release,) = [
        r for r in dev.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "cluster-autoscaler"
    ]
    assert release.inputs["values"]["autoDiscovery"]["clusterName"] == "tf-dev-eks"
    policy = json.loads(
        dev.one("aws:iam/rolePolicy:RolePolicy", "tf-dev-cluster-autoscaler").inputs["policy"]
    )
    resize = next(s for s in policy["Statement"] if "autoscaling:SetDesiredCapacity" in s["Action"])
    assert resize["Condition"]["StringEquals"] == {
        "aws:ResourceTag/k8s.io/cluster-autoscaler/tf-dev-eks": "owned"
    }
    trust = json.loads(dev.one("aws:iam/role:Role", "tf-dev-cluster-autoscaler").inputs["assumeRolePolicy"])
    subjects = trust["Statement"][0]["Condition"]["StringEquals"].values()
    assert "system:serviceaccount:kube-system:cluster-autoscaler" in subjects
