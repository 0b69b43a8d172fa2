"""Azure network (azure/network.py): the resource group, the VNet and its address plan."""

from __future__ import annotations

import itertools

from infra.offline import Plan
from tests.infra.platform.dependencies import registrations


def test_resource_group_vnet_and_node_subnets(dev: Plan) -> None:
    assert dev.one("azure-native:resources:ResourceGroup").inputs["resourceGroupName"] == "tf-dev-rg"
    vnet = dev.one("azure-native:network:VirtualNetwork").inputs
    assert vnet["addressSpace"] == {"addressPrefixes": ["10.80.0.0/16"]}
    prefixes = sorted(s.inputs["addressPrefix"] for s in dev.of_type("azure-native:network:Subnet"))
    assert prefixes == ["10.80.0.0/18", "10.80.128.0/26", "10.80.64.0/18"]  # system, APIM, GPU


def test_every_subnet_of_the_vnet_waits_for_the_one_before_it() -> None:
    # Azure refuses concurrent subnet writes in one VNet (AnotherOperationInProgress).
    recorded = registrations("azure-dev")
    subnets = {s.inputs["subnetName"]: s for s in recorded.plan.of_type("azure-native:network:Subnet")}
    chain = [subnets["tf-dev-system"], subnets["tf-dev-gpu"], subnets["tf-dev-apim"]]
    for before, after in itertools.pairwise(chain):
        assert recorded.waits_for(after, before), f"{after.name} does not wait for {before.name}"
    assert not any(recorded.waits_for(chain[0], other) for other in chain[1:])
