"""GCP and Azure settings: every wrong value is refused with a message that names the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.offline import plan_stack
from infra.settings import SettingsError, load_settings

GCP: dict[str, Any] = {
    "cloud": "gcp",
    "region": "us-central1",
    "gcp": {"project": "tritonform-dev"},
    "gpuPool": {"instanceType": "g2-standard-8"},
}
AZURE: dict[str, Any] = {
    "cloud": "azure",
    "region": "westeurope",
    "gpuPool": {"instanceType": "Standard_NC4as_T4_v3"},
}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    merged = {**base}
    for key, value in changes.items():
        merged[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def _problems(config: dict[str, Any]) -> str:
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    return str(caught.value)


def test_minimal_gcp_and_azure_stacks_get_defaults() -> None:
    gcp = load_settings(GCP)
    assert gcp.gcp is not None and gcp.gcp.release_channel == "REGULAR" and gcp.gcp.zonal is False
    assert gcp.system_instance_type == "e2-standard-4"
    azure = load_settings(AZURE)
    assert azure.azure is None and azure.system_instance_type == "Standard_D4s_v5"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"gpuPool": {"accelerator": "nvidia-tesla-k80"}},
            "gpuPool.accelerator: 'nvidia-tesla-k80' is not a GCP",
        ),
        ({"gpuPool": {"accelerator": "nvidia-tesla-t4"}}, "g2-standard-8 has nvidia-l4 built in"),
        (
            {"gpuPool": {"instanceType": "n1-standard-4", "accelerator": "nvidia-l4"}},
            "cannot be attached to n1",
        ),
        ({"gpuPool": {"instanceType": "g2-standard-24"}}, "gpuPool.gpusPerNode: g2-standard-24 comes with 2"),
        (
            {"gpuPool": {"instanceType": "e2-standard-8"}},
            "gpuPool.instanceType: 'e2-standard-8' is not a known GPU",
        ),
        ({"gpuPool": {"minNodes": 3, "maxNodes": 2}}, "minNodes <= desiredNodes <= maxNodes"),
        ({"gcp": {"zonal": True}}, "tritonform:gcp: zone: a zonal cluster"),
        ({"gcp": {"zone": "us-central1-a"}}, "zone: only used with zonal: true"),
        ({"gcp": {"zonal": True, "zone": "uscentral"}}, "tritonform:gcp.zone: must be a GCP zone"),
        ({"gcp": {"project": "My_Project"}}, "tritonform:gcp.project: must be a GCP project id"),
        ({"gcp": {"releaseChannel": "NIGHTLY"}}, "tritonform:gcp.releaseChannel"),
        ({"azure": {"spotMaxPrice": 1.0}}, "tritonform: azure: this block is only for cloud azure"),
    ],
)
def test_gcp_errors_name_the_key(changes: dict[str, Any], expected: str) -> None:
    assert expected in _problems(_with(GCP, **changes))


def test_gcp_stack_without_gcp_block() -> None:
    config = {k: v for k, v in GCP.items() if k != "gcp"}
    assert "the GCP stack needs a `gcp:` block" in _problems(config)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"gpuPool": {"instanceType": "Standard_D4s_v5"}},
            "gpuPool.instanceType: 'Standard_D4s_v5' is not a known GPU",
        ),
        ({"gpuPool": {"accelerator": "nvidia-l4"}}, "gpuPool.accelerator: only GCP attaches accelerators"),
        ({"gpuPool": {"gpusPerNode": 2}}, "gpuPool.gpusPerNode: Standard_NC4as_T4_v3 has 1 GPU"),
        (
            {"gpuPool": {"minNodes": 5, "desiredNodes": 5, "maxNodes": 4}},
            "tritonform:gpuPool: needs minNodes",
        ),
        ({"azure": {"spotMaxPrice": 0}}, "tritonform:azure.spotMaxPrice: must be -1"),
        (
            {"azure": {"adminGroupObjectIds": ["admins"]}},
            "tritonform:azure.adminGroupObjectIds: 'admins' is not",
        ),
        ({"azure": {"podCidr": "192.168.0.1/16"}}, "tritonform:azure.podCidr: must be a CIDR block"),
        ({"azure": {"resourceGroup": "rg."}}, "tritonform:azure.resourceGroup"),
        ({"azure": {"deployerPrincipalType": "Robot"}}, "tritonform:azure.deployerPrincipalType"),
        ({"azure": {"kubeletSize": 3}}, "tritonform:azure.kubeletSize: unknown setting"),
        ({"gcp": {"project": "tritonform-dev"}}, "tritonform: gcp: this block is only for cloud gcp"),
    ],
)
def test_azure_errors_name_the_key(changes: dict[str, Any], expected: str) -> None:
    assert expected in _problems(_with(AZURE, **changes))


# Values only the cloud can judge against other blocks are checked when the platform starts.
def _stack(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Pulumi.check.yaml"
    path.write_text(text)
    return path


def test_azure_overlay_ranges_must_not_overlap_the_vnet(tmp_path: Path) -> None:
    path = _stack(
        tmp_path,
        """config:
  tritonform:cloud: azure
  tritonform:region: westeurope
  tritonform:network: {cidr: 192.168.0.0/16}
  tritonform:gpuPool: {instanceType: Standard_NC4as_T4_v3}
""",
    )
    with pytest.raises(SettingsError, match=r"tritonform:azure.podCidr: 192.168.0.0/16 overlaps network"):
        plan_stack(path)


@pytest.mark.parametrize(
    ("cloud_block", "expected"),
    [
        (
            "tritonform:cloud: gcp\n  tritonform:gcp: {project: tritonform-dev}\n"
            "  tritonform:region: us-central1\n"
            "  tritonform:gpuPool: {instanceType: g2-standard-8}\n",
            "is not a Cloud KMS key",
        ),
        (
            "tritonform:cloud: azure\n  tritonform:region: westeurope\n"
            "  tritonform:gpuPool: {instanceType: Standard_NC4as_T4_v3}\n",
            "is not a Key Vault key resource id",
        ),
    ],
)
def test_kms_key_must_be_in_the_cloud_format(tmp_path: Path, cloud_block: str, expected: str) -> None:
    path = _stack(tmp_path, f"config:\n  {cloud_block}  tritonform:bucket: {{kmsKey: arn:aws:kms:x}}\n")
    with pytest.raises(SettingsError, match=f"tritonform:bucket.kmsKey: .*{expected}"):
        plan_stack(path)
