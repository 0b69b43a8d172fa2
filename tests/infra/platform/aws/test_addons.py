"""AWS add-ons (aws/addons.py): NVIDIA's device plugin, the cluster autoscaler with its IRSA role, the EBS CSI
driver with the default StorageClass, and metrics-server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pulumi_kubernetes as k8s
import pytest
from pulumi.runtime.sync_await import _sync_await

from infra.catalog import CLUSTER_AUTOSCALER_TAGS, CloudName
from infra.offline import Plan, plan_stack
from infra.offline.render import manifest, validate
from infra.settings import SettingsError
from tests.infra.platform.provisioned import provisioned


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


# -- storage, metrics and the autoscaler's image (issue 21) ----------------------------------------
def _trust_subjects(plan: Plan, role: str) -> set[str]:
    trust = json.loads(plan.one("aws:iam/role:Role", role).inputs["assumeRolePolicy"])
    return {v for s in trust["Statement"] for v in s["Condition"]["StringEquals"].values()}


def test_ebs_csi_driver_is_a_managed_addon_with_its_own_irsa_role(dev: Plan) -> None:
    addon = dev.one("aws:eks/addon:Addon", "tf-dev-ebs-csi").inputs
    assert addon["addonName"] == "aws-ebs-csi-driver"
    assert addon["serviceAccountRoleArn"] == "arn:aws:iam::111122223333:role/tf-dev-ebs-csi"
    assert _trust_subjects(dev, "tf-dev-ebs-csi") == {
        "system:serviceaccount:kube-system:ebs-csi-controller-sa",
        "sts.amazonaws.com",
    }
    attachment = dev.one("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "tf-dev-ebs-csi").inputs
    assert attachment["policyArn"] == "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
    assert attachment["role"] == "tf-dev-ebs-csi"
    # Nodes keep pods away from the metadata service (hop limit 1): the controller is given its region.
    assert json.loads(addon["configurationValues"]) == {"controller": {"region": "us-east-1"}}
    # The controller needs nodes to run on before the add-on turns active.
    added = dev.one("aws:eks/addon:Addon", "tf-dev-ebs-csi")
    assert "aws:eks/nodeGroup:NodeGroup::tf-dev-system" in added.dependencies


def test_default_storage_class_is_encrypted_gp3_bound_at_first_consumer(dev: Plan) -> None:
    (storage_class,) = dev.of_type("kubernetes:storage.k8s.io/v1:StorageClass")
    spec = storage_class.inputs
    assert spec["metadata"]["annotations"] == {"storageclass.kubernetes.io/is-default-class": "true"}
    assert spec["provisioner"] == "ebs.csi.aws.com"
    assert spec["parameters"]["type"] == "gp3" and spec["parameters"]["encrypted"] == "true"
    assert spec["volumeBindingMode"] == "WaitForFirstConsumer"
    assert "aws:eks/addon:Addon::tf-dev-ebs-csi" in storage_class.dependencies
    assert validate(manifest(storage_class), dev.settings.cluster.kubernetes_version)


def test_the_workload_is_given_the_storage_class_and_metrics_server_to_wait_for() -> None:
    dependencies = provisioned("aws-dev").platform.workload_dependencies
    assert sorted(type(resource).__name__ for resource in dependencies) == ["Release", "StorageClass"]
    (release,) = [r for r in dependencies if isinstance(r, k8s.helm.v3.Release)]
    assert _sync_await(release.chart.future()) == "metrics-server"


def test_metrics_server_serves_the_metrics_api_from_the_system_nodes(dev: Plan, prod: Plan) -> None:
    release = dev.one("kubernetes:helm.sh/v3:Release", "tf-dev-metrics-server").inputs
    assert release["chart"] == "metrics-server" and release["namespace"] == "kube-system"
    assert release["version"] == dev.settings.addons.metrics_server_version == "3.13.1"
    assert release["repositoryOpts"]["repo"] == "https://kubernetes-sigs.github.io/metrics-server/"
    assert release["values"]["nodeSelector"] == {"tritonform.dev/pool": "system"}
    prod_values = prod.one("kubernetes:helm.sh/v3:Release", "tf-prod-metrics-server").inputs["values"]
    assert prod_values["replicas"] == 2 and prod_values["podDisruptionBudget"]["enabled"] is True


def test_cluster_autoscaler_runs_the_release_of_the_clusters_minor(dev: Plan) -> None:
    (release,) = [
        r for r in dev.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "cluster-autoscaler"
    ]
    image = release.inputs["values"]["image"]
    assert dev.settings.cluster.kubernetes_version == "1.36"
    assert image == {"repository": "registry.k8s.io/autoscaling/cluster-autoscaler", "tag": "v1.36.1"}
    assert image["tag"] == CLUSTER_AUTOSCALER_TAGS["1.36"]


def test_a_minor_without_an_autoscaler_release_stops_the_plan_naming_the_choices(
    ready_stack: Callable[[CloudName, str], Path],
) -> None:
    path = ready_stack("aws", "dev")
    path.write_text(path.read_text().replace("kubernetesVersion: '1.36'", "kubernetesVersion: '1.37'"))
    with pytest.raises(SettingsError) as caught:
        plan_stack(path)
    message = str(caught.value)
    assert "1.37" in message and "cluster-autoscaler" in message
    assert all(tag in message for tag in CLUSTER_AUTOSCALER_TAGS.values())
