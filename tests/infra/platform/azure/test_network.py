"""Azure network (azure/network.py): the resource group, the VNet and its address plan."""

from __future__ import annotations

from infra.offline import Plan


def test_resource_group_vnet_and_node_subnets(dev: Plan) -> None:
    assert dev.one("azure-native:resources:ResourceGroup").inputs["resourceGroupName"] == "tf-dev-rg"
    vnet = dev.one("azure-native:network:VirtualNetwork").inputs
    assert vnet["addressSpace"] == {"addressPrefixes": ["10.80.0.0/16"]}
    prefixes = sorted(s.inputs["addressPrefix"] for s in dev.of_type("azure-native:network:Subnet"))
    assert prefixes == ["10.80.0.0/18", "10.80.128.0/26", "10.80.64.0/18"]  # system, APIM, GPU
