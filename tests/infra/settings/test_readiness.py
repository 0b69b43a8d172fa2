"""A stack that still holds example values cannot reach `pulumi up`: each one is named with how to set it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pulumi
import pytest

from infra import program
from infra.catalog import KUBERNETES_CALENDAR_CHECKED
from infra.settings import load_stack_file
from infra.settings.readiness import check_readiness
from tests.infra.conftest import STACKS

DAY = KUBERNETES_CALENDAR_CHECKED


def _blockers(stack: str) -> list[str]:
    return list(check_readiness(load_stack_file(STACKS / f"Pulumi.{stack}.yaml"), DAY).blockers)


def test_documentation_ranges_block_with_the_key_and_a_command() -> None:
    blockers = _blockers("aws-dev")
    assert len(blockers) == 2
    assert blockers[0].startswith("tritonform:cluster.endpointAllowedCidrs holds 203.0.113.0/24")
    assert "pulumi config set --path 'tritonform:cluster.endpointAllowedCidrs[0]'" in blockers[0]
    assert blockers[1].startswith("tritonform:allowedClientCidrs holds 203.0.113.0/24")


def test_a_private_api_needs_no_allowed_cidrs() -> None:
    assert not [b for b in _blockers("aws-prod") if "endpointAllowedCidrs" in b]


@pytest.mark.parametrize(
    ("stack", "expected"),
    [
        ("aws-prod", "tritonform:bucket.kmsKey is the AWS documentation's example key"),
        ("gcp-dev", "tritonform:gcp.project is the example's placeholder 'your-project-id'"),
        ("gcp-prod", "tritonform:bucket.kmsKey names the example's placeholder project"),
        ("azure-prod", "tritonform:azure.adminGroupObjectIds holds the example id"),
        ("azure-prod", "tritonform:bucket.kmsKey names the example subscription"),
    ],
)
def test_placeholder_ids_block(stack: str, expected: str) -> None:
    assert any(b.startswith(expected) for b in _blockers(stack)), _blockers(stack)


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_the_users_values_leave_nothing_to_set(
    ready_stack: Callable[[str, str], Path], cloud: str, environment: str
) -> None:
    assert check_readiness(load_stack_file(ready_stack(cloud, environment)), DAY).blockers == ()


def test_a_version_no_longer_created_blocks(ready_stack: Callable[[str, str], Path]) -> None:
    path = ready_stack("aws", "dev")
    path.write_text(path.read_text().replace("kubernetesVersion: '1.36'", "kubernetesVersion: '1.31'"))
    blockers = check_readiness(load_stack_file(path), DAY).blockers
    assert len(blockers) == 1 and "EKS no longer creates clusters on 1.31" in blockers[0]


def test_the_program_refuses_an_unready_stack_before_any_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_stack_file(STACKS / "Pulumi.gcp-dev.yaml")
    built: list[object] = []
    monkeypatch.setattr(program, "settings_from_pulumi", lambda: settings)
    monkeypatch.setattr(program, "build_stack", lambda s: built.append(s) or {})
    monkeypatch.setattr(pulumi, "get_stack", lambda: "gcp-dev")
    with pytest.raises(pulumi.RunError) as refused:
        program.main(today=DAY)
    assert "stack gcp-dev is not ready for `pulumi up`" in str(refused.value)
    assert "tritonform:gcp.project" in str(refused.value) and built == []
    program.main(check_ready=False, today=DAY)  # the offline plan's way: builds, reports readiness itself
    assert built == [settings]


def test_pulumi_runs_main_and_nothing_else() -> None:
    source = (Path(program.__file__).parent / "__main__.py").read_text()
    code = [line for line in source.splitlines() if line and not line.startswith(("#", '"""'))]
    assert code == ["from infra.program import main", "main()"]


def test_an_eks_minor_without_a_cluster_autoscaler_release_blocks_naming_the_choices(
    ready_stack: Callable[[str, str], Path],
) -> None:
    path = ready_stack("aws", "dev")
    path.write_text(path.read_text().replace("kubernetesVersion: '1.36'", "kubernetesVersion: '1.37'"))
    (blocker,) = check_readiness(load_stack_file(path), DAY).blockers  # EKS itself creates 1.37
    assert blocker.startswith("tritonform:cluster.kubernetesVersion is 1.37")
    assert "cluster-autoscaler" in blocker and "1.36 (v1.36.1)" in blocker


def test_triton_at_zero_with_a_gpu_node_kept_up_is_a_warning() -> None:
    """minReplicas 0 with gpuPool.minNodes > 0 would keep a GPU node up with nothing on it: warned, not
    blocked; with minNodes 0 nothing is said."""
    from infra.settings import load_settings

    base = {"cloud": "aws", "region": "us-east-1", "triton": {"minReplicas": 0}}
    kept = load_settings({**base, "gpuPool": {"instanceType": "g5.xlarge", "minNodes": 1, "desiredNodes": 1}})
    warnings = check_readiness(kept, DAY).warnings
    assert any("triton.minReplicas is 0 but gpuPool.minNodes is 1" in w for w in warnings)
    freed = load_settings({**base, "gpuPool": {"instanceType": "g5.xlarge", "minNodes": 0}})
    assert not any("minReplicas is 0" in w for w in check_readiness(freed, DAY).warnings)
