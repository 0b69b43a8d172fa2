"""The AWS platform class (aws/__init__.py): the stack outputs it provisions."""

from __future__ import annotations

from infra.offline import Plan


def test_stack_outputs(dev: Plan) -> None:
    out = dev.outputs
    assert out["cluster_name"] == "tf-dev-eks"
    assert out["kubeconfig"] == "[secret]"
    assert out["bucket_uri"] == "s3://tf-dev-models-0123abcd"
    assert out["region"] == "us-east-1"
    assert out["gpu_tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
