"""Azure edge (azure/edge.py): API Management in the VNet in front of the gateway's internal load balancer."""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

from infra.offline import Plan
from infra.platform.azure.network import apim_subnet, backend_ip
from tests.infra.platform.dependencies import registrations


def _subnet(plan: Plan, name: str) -> dict:
    subnets = plan.of_type("azure-native:network:Subnet")
    return next(s.inputs for s in subnets if s.inputs["subnetName"] == name)


def _policy(plan: Plan) -> ET.Element:
    return ET.fromstring(plan.one("azure-native:apimanagement:ApiPolicy").inputs["value"])


def test_gateway_service_is_an_internal_lb_on_a_fixed_ip_of_the_system_subnet(dev: Plan) -> None:
    service = next(r for r in dev.of_type("kubernetes:core/v1:Service") if r.name == "gateway").inputs
    annotations = service["metadata"]["annotations"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-internal"] == "true"
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-internal-subnet"] == "tf-dev-system"
    ip = annotations["service.beta.kubernetes.io/azure-load-balancer-ipv4"]
    system = _subnet(dev, "tf-dev-system")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(system["addressPrefix"])
    assert int(annotations["service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout"]) * 60 > (
        dev.settings.edge.stream_timeout_seconds
    )
    grants = dev.of_type("azure-native:authorization:RoleAssignment")
    grant = next(r.inputs for r in grants if "subnet-network" in r.name)
    assert grant["scope"].endswith("/subnets/tf-dev-system")


def test_apim_is_vnet_injected_in_its_own_subnet_with_the_required_nsg(dev: Plan, prod: Plan) -> None:
    apim = dev.one("azure-native:apimanagement:ApiManagementService").inputs
    assert apim["sku"] == {"name": "Developer", "capacity": 1}
    assert prod.one("azure-native:apimanagement:ApiManagementService").inputs["sku"]["name"] == "Premium"
    assert apim["virtualNetworkType"] == "External"
    subnet = _subnet(dev, "tf-dev-apim")
    assert subnet["addressPrefix"] == apim_subnet("10.80.0.0/16") == "10.80.128.0/26"
    assert apim["virtualNetworkConfiguration"]["subnetResourceId"].endswith("/subnets/tf-dev-apim")
    rules = dev.one("azure-native:network:NetworkSecurityGroup").inputs["securityRules"]
    inbound = {
        (r["sourceAddressPrefix"], tuple(r["destinationPortRanges"]))
        for r in rules
        if r["direction"] == "Inbound"
    }
    assert {("ApiManagement", ("3443",)), ("AzureLoadBalancer", ("6390",)), ("Internet", ("443",))} <= inbound
    assert "/networkSecurityGroups/tf-dev-apim" in subnet["networkSecurityGroup"]["id"]


def test_backend_api_and_operations(dev: Plan) -> None:
    backend = dev.one("azure-native:apimanagement:Backend").inputs
    assert backend["url"] == f"http://{backend_ip('10.80.0.0/16')}:80" and backend["protocol"] == "http"
    api = dev.one("azure-native:apimanagement:Api").inputs
    assert api["subscriptionRequired"] is False and api["protocols"] == ["https"]
    ops = {
        (o.inputs["method"], o.inputs["urlTemplate"])
        for o in dev.of_type("azure-native:apimanagement:ApiOperation")
    }
    assert ops == {("POST", "/v1/*"), ("GET", "/v1/*")}
    assert dev.outputs["endpoint_url"].startswith("https://") and dev.outputs["endpoint_url"].endswith(
        ".azure-api.net"
    )


def test_policy_streams_unbuffered_filters_ips_and_limits_per_key(dev: Plan) -> None:
    policy = _policy(dev)
    forward = policy.find("./backend/forward-request")
    assert forward is not None and forward.get("buffer-response") == "false"
    assert int(forward.get("timeout", "0")) >= 60
    ranges = policy.findall("./inbound/ip-filter/address-range")
    assert [(r.get("from"), r.get("to")) for r in ranges] == [("203.0.113.0", "203.0.113.255")]
    assert policy.find("./inbound/ip-filter").get("action") == "allow"  # type: ignore[union-attr]
    limit = policy.find("./inbound/rate-limit-by-key")
    assert limit is not None and "Authorization" in limit.get("counter-key", "")
    assert int(limit.get("calls", "0")) / int(limit.get("renewal-period", "1")) == (
        dev.settings.edge.rate_limit_per_second
    )
    backend = policy.find("./inbound/set-backend-service")
    assert backend is not None and backend.get("backend-id") == "tritonform-gateway"
    text = dev.one("azure-native:apimanagement:ApiPolicy").inputs["value"]
    assert not any(tag in text for tag in ("cache-lookup", "cache-store", "log-to-", "validate-content"))


def test_apim_gets_time_to_be_created_in_a_vnet() -> None:
    # Creating API Management in a VNet takes 30-90 minutes.
    recorded = registrations("azure-dev")
    apim = recorded.plan.one("azure-native:apimanagement:ApiManagementService")
    timeouts = recorded.timeouts[apim.urn]
    assert timeouts == {"create": "2h", "update": "2h", "delete": "2h"}
