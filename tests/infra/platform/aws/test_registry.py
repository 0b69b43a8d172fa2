"""AWS registry (aws/registry.py): ECR repositories, scanned and encrypted."""

from __future__ import annotations

from infra.offline import Plan


def test_ecr_repositories_scan_and_encrypt(dev: Plan) -> None:
    repos = dev.of_type("aws:ecr/repository:Repository")
    assert sorted(r.inputs["name"] for r in repos) == [
        "tf-dev/tritonform-gateway",
        "tf-dev/tritonform-trainer",
        "tf-dev/tritonform-triton",
    ]
    for repo in repos:
        assert repo.inputs["imageScanningConfiguration"]["scanOnPush"] is True
        assert repo.inputs["encryptionConfigurations"][0]["encryptionType"] == "KMS"
    builds = dev.of_type("docker-build:index:Image")
    assert all(b.inputs["registries"] == "[secret]" for b in builds)  # push credentials stay secret
