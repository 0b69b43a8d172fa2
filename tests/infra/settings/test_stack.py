"""Settings: every stack file parses, every default is applied once, every wrong value is named clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.catalog import DEFAULT_KUBERNETES_VERSION
from infra.settings import (
    SYSTEM_MACHINE_DEFAULTS,
    SettingsError,
    StackSettings,
    config_from_stack_file,
    load_settings,
    load_stack_file,
)
from tests.infra.conftest import STACK_FILES

MINIMAL_AWS: dict[str, Any] = {
    "cloud": "aws",
    "region": "us-east-1",
    "gpuPool": {"instanceType": "g5.xlarge"},
}


def _with(**changes: Any) -> dict[str, Any]:
    config = {**MINIMAL_AWS}
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node[key] = dict(node.get(key, {}))
            node = node[key]
        node[leaf] = value
    return config


def _problem(config: dict[str, Any]) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    return str(info.value)


@pytest.mark.parametrize("path", STACK_FILES, ids=lambda p: p.name)
def test_every_stack_file_parses(path: Path) -> None:
    settings = load_stack_file(path)
    assert isinstance(settings, StackSettings)
    assert path.name == f"Pulumi.{path.name.split('.')[1]}.yaml"


def test_minimal_stack_gets_documented_defaults() -> None:
    s = load_settings(MINIMAL_AWS)
    assert s.environment == "dev"
    assert s.network.zone_count == 2
    assert s.cluster.kubernetes_version == DEFAULT_KUBERNETES_VERSION
    assert (s.gpu_pool.min_nodes, s.gpu_pool.desired_nodes, s.gpu_pool.max_nodes) == (0, 1, 2)
    assert s.gpu_pool.capacity == "on-demand"
    assert s.system_instance_type == SYSTEM_MACHINE_DEFAULTS["aws"]
    assert s.api_public is True


def test_prod_api_is_private_unless_asked() -> None:
    assert load_settings(_with(environment="prod")).api_public is False
    assert load_settings(_with(environment="prod", cluster__endpointPublicAccess=True)).api_public is True


def test_settings_are_frozen() -> None:
    s = load_settings(MINIMAL_AWS)
    with pytest.raises(Exception, match="frozen"):
        s.region = "eu-west-1"  # type: ignore[misc]


def test_missing_region_names_the_key() -> None:
    config = {k: v for k, v in MINIMAL_AWS.items() if k != "region"}
    assert "tritonform:region: required setting is missing" in _problem(config)


def test_min_greater_than_max_names_the_pool_and_values() -> None:
    msg = _problem(_with(gpuPool__minNodes=3, gpuPool__desiredNodes=3, gpuPool__maxNodes=2))
    assert (
        "tritonform:gpuPool" in msg and "minNodes <= desiredNodes <= maxNodes" in msg and "3 <= 3 <= 2" in msg
    )


def test_non_gpu_instance_family_is_refused_with_the_allowed_families() -> None:
    msg = _problem(_with(gpuPool__instanceType="m5.xlarge"))
    assert "'m5.xlarge' is not an NVIDIA GPU instance type" in msg
    assert "g5" in msg and "p4d" in msg


def test_more_gpus_per_node_than_the_machine_has() -> None:
    msg = _problem(_with(gpuPool__gpusPerNode=4))
    assert "g5.xlarge has 1 GPU(s)" in msg


def test_bad_cidr_names_key_value_and_format() -> None:
    msg = _problem(_with(allowedClientCidrs=["10.0.0.300/24"]))
    assert "tritonform:allowedClientCidrs" in msg and "10.0.0.300/24" in msg
    assert "must be a CIDR block" in msg


def test_small_vpc_cidr_is_refused() -> None:
    assert "must be /20 or larger" in _problem(_with(network__cidr="10.0.0.0/24"))


def test_unknown_key_is_reported_not_ignored() -> None:
    msg = _problem(_with(gpuPool__instnceType="g5.xlarge"))
    assert "tritonform:gpuPool.instnceType: unknown setting" in msg


def test_unknown_cloud_lists_the_valid_ones() -> None:
    msg = _problem(_with(cloud="ibm"))
    assert "tritonform:cloud" in msg and "'aws'" in msg and "'azure'" in msg and "'gcp'" in msg


def test_bad_kubernetes_version() -> None:
    assert f'e.g. "{DEFAULT_KUBERNETES_VERSION}"' in _problem(_with(cluster__kubernetesVersion="latest"))


def test_bad_spot_value_lists_choices() -> None:
    msg = _problem(_with(gpuPool__capacity="cheap"))
    assert "tritonform:gpuPool.capacity" in msg and "'spot'" in msg and "'on-demand'" in msg


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(_with(region="US East", network__zoneCount=9))
    assert len(info.value.problems) == 2


def test_stack_file_reading_keeps_only_our_namespace(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(yaml.safe_dump({"config": {"aws:region": "us-west-2", "tritonform:cloud": "aws"}}))
    assert config_from_stack_file(path) == {"cloud": "aws"}


def test_stack_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_stack_file(tmp_path / "Pulumi.none.yaml")
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text("config: [unclosed")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_stack_file(bad)
    bad.write_text("name: x\n")
    with pytest.raises(SettingsError, match="top-level `config:`"):
        load_stack_file(bad)


def test_triton_may_scale_to_zero_with_a_cold_start_bound() -> None:
    """`triton.minReplicas: 0` is allowed (KEDA scales Triton to zero); the gateway's cold-start wait and
    the scale-to-zero delay have documented defaults."""
    s = load_settings(_with(triton__minReplicas=0, environment="prod"))
    assert s.triton_min_replicas == 0
    assert s.triton.scale_to_zero_after_seconds == 600
    assert s.gateway.cold_start_timeout_seconds == 540 < s.edge.stream_timeout_seconds
    assert "tritonform:triton" in _problem(_with(triton__minReplicas=-1))


def test_a_cold_start_wait_the_edge_would_cut_is_refused() -> None:
    """A held request must get the gateway's 503 before the edge cuts the connection."""
    msg = _problem(_with(gateway__coldStartTimeoutSeconds=300, edge__streamTimeoutSeconds=120))
    assert "gateway.coldStartTimeoutSeconds" in msg and "edge.streamTimeoutSeconds (120 s)" in msg
