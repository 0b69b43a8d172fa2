"""`plan`'s cost block (infra/cost.py): hourly list prices add up per part at min, desired and max nodes,
the per-token figure is the hourly price over the modelled full-load throughput, and every example stack
gets one (also in `plan --json`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from infra.catalog import AWS_GPU_MACHINES, FIXED_PRICES, KUBERNETES_CALENDAR_CHECKED, SYSTEM_MACHINE_PRICES
from infra.cost import stack_cost
from infra.settings import load_settings, load_stack_file
from tests.infra.conftest import STACK_FILES
from tritonform.cli import app


def _aws(**gpu_pool: Any) -> dict[str, Any]:
    pool = {"instanceType": "g5.xlarge", "minNodes": 0, "desiredNodes": 1, "maxNodes": 3, **gpu_pool}
    return {"cloud": "aws", "region": "us-east-1", "gpuPool": pool, "triton": {"maxReplicas": 4}}


def test_hourly_parts_add_up_at_each_node_count() -> None:
    cost = stack_cost(load_settings(_aws()))
    fixed = FIXED_PRICES["aws"]
    system = SYSTEM_MACHINE_PRICES["aws"]["m6i.large"]
    for name, gpu_nodes, system_nodes in (("min", 0, 1), ("desired", 1, 2), ("max", 3, 3)):
        level = cost.level(name)
        assert level.parts["gpu_pool"] == pytest.approx(
            gpu_nodes * AWS_GPU_MACHINES["g5.xlarge"].usd_per_hour
        )
        assert level.parts["system_pool"] == pytest.approx(system_nodes * system)
        assert level.parts["nat"] == pytest.approx(fixed.nat_gateway)  # dev: one NAT gateway
        assert level.usd_per_hour == pytest.approx(sum(level.parts.values()))
    assert cost.level("min").usd_per_million_tokens is None  # no GPU node, no tokens


def test_per_million_tokens_is_hourly_price_over_full_load_throughput() -> None:
    cost = stack_cost(load_settings(_aws()))
    desired = cost.level("desired")
    per_replica = cost.throughput["tokens_per_second_per_replica"]
    assert desired.replicas == 1 and desired.tokens_per_second == pytest.approx(per_replica)
    assert desired.usd_per_million_tokens == pytest.approx(desired.usd_per_hour / (per_replica * 3600) * 1e6)
    assert cost.throughput["gpu"] == "A10G 24GB" and cost.throughput["bandwidth_gb_s"] == 600
    assert "estimate" in cost.throughput["label"]


def test_prod_pays_a_nat_gateway_per_zone_and_replicas_stop_at_max_replicas() -> None:
    config = _aws(instanceType="g5.12xlarge", gpusPerNode=4, minNodes=1, maxNodes=4)
    config |= {"environment": "prod", "network": {"zoneCount": 3}}
    cost = stack_cost(load_settings(config))
    assert cost.level("desired").parts["nat"] == pytest.approx(3 * FIXED_PRICES["aws"].nat_gateway)
    assert cost.level("max").replicas == 4  # 16 GPUs, but triton.maxReplicas is 4
    assert any("would be paid for and idle" in note for note in cost.notes)


def test_an_unlisted_instance_type_is_named_instead_of_priced() -> None:
    cost = stack_cost(load_settings(_aws(instanceType="g5.8xlarge")))
    assert cost.fit is None and cost.level("desired").parts["gpu_pool"] == 0
    assert any("g5.8xlarge is not in infra/catalog.py" in note for note in cost.notes)


@pytest.mark.parametrize("path", STACK_FILES, ids=lambda p: p.name)
def test_every_example_stack_has_a_cost_and_a_fit(path: Any) -> None:
    cost = stack_cost(load_stack_file(path)).as_dict()
    assert cost["fit"]["fits"] is True
    assert cost["desired"]["usd_per_hour"] > 0 and cost["desired"]["usd_per_million_output_tokens"] > 0
    assert cost["estimate"] is True and cost["notes"]


def test_plan_json_carries_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tritonform.commands.infra.today", lambda: KUBERNETES_CALENDAR_CHECKED)
    result = CliRunner().invoke(app, ["plan", "--stack", "gcp-prod", "--json"])
    doc = json.loads(result.stdout)
    assert doc["cost"]["throughput_model"]["tensor_parallel"] == 2
    assert set(doc["cost"]) >= {"min", "desired", "max", "fit", "notes"}
    tree = CliRunner().invoke(app, ["plan", "--stack", "gcp-prod"])
    assert "USD per million" in tree.stdout and "throughput estimate:" in tree.stdout


def test_idle_cost_keeps_the_gpu_nodes_the_idle_replicas_need_and_drops_them_at_zero() -> None:
    """Today: the nodes Triton's idle replicas need (prod: 2) at the catalogue's GPU price, plus the system
    pool at minNodes and the always-on parts; at zero: the system pool and always-on parts only."""
    from infra.cost import idle_cost

    settings = load_settings({**_aws(), "environment": "prod"})
    cost = idle_cost(settings)
    assert cost.gpu_nodes == 2
    assert cost.today["gpu_pool"] == pytest.approx(2 * AWS_GPU_MACHINES["g5.xlarge"].usd_per_hour)
    assert "gpu_pool" not in cost.at_zero
    assert cost.at_zero["system_pool"] == cost.today["system_pool"]
    assert sum(cost.at_zero.values()) < sum(cost.today.values())


def test_the_readme_idle_cost_table_is_the_catalogue_s() -> None:
    """README's idle-cost table is exactly what `python -m infra.cost` prints for the shipped stacks."""
    from pathlib import Path

    from infra.cost import idle_cost_table

    stacks = {p.name.removeprefix("Pulumi.").removesuffix(".yaml"): load_stack_file(p) for p in STACK_FILES}
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert idle_cost_table(stacks) in readme
