"""Azure edge, registry and GPU enablement through the real program under mocks: APIM in the VNet in front
of an internal load balancer, ACR with a scoped push token, and NVIDIA's device plugin."""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

import pytest

from infra.mocks_azure import ACR_TOKEN_PASSWORD, KUBELET_OBJECT_ID
from infra.offline import Plan
from infra.platform.azure.edge import apim_subnet, backend_ip
from infra.platform.azure.registry import ACR_PULL, push_actions
from tests.infra.test_platform_contract import provisioned


@pytest.fixture
def dev() -> Plan:
    return provisioned("azure-dev").plan


@pytest.fixture
def prod() -> Plan:
    return provisioned("azure-prod").plan


def _subnet(plan: Plan, name: str) -> dict:
    subnets = plan.of_type("azure-native:network:Subnet")
    return next(s.inputs for s in subnets if s.inputs["subnetName"] == name)


def _policy(plan: Plan) -> ET.Element:
    return ET.fromstring(plan.one("azure-native:apimanagement:ApiPolicy").inputs["value"])


def test_device_plugin_schedules_on_gpu_nodes_without_nfd(dev: Plan) -> None:
    releases = [
        r.inputs
        for r in dev.of_type("kubernetes:helm.sh/v3:Release")
        if r.inputs["chart"] == "nvidia-device-plugin"
    ]
    assert len(releases) == 1
    release = releases[0]
    assert release["repositoryOpts"] == {"repo": "https://nvidia.github.io/k8s-device-plugin"}
    assert release["version"] == dev.settings.addons.device_plugin_version
    values = release["values"]
    assert values["gfd"] == {"enabled": False} and values["nfd"] == {"enabled": False}
    assert values["nodeSelector"] == {"tritonform.dev/pool": "gpu"}
    terms = values["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    # Only a label AKS GPU nodes really carry; none of the chart's NFD labels.
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "accelerator", "operator": "In", "values": ["nvidia"]}]}
    ]
    keys = {t["key"] for t in values["tolerations"]}
    assert {"nvidia.com/gpu", "kubernetes.azure.com/scalesetpriority"} <= keys  # dev is a Spot pool
    pool = dev.one("azure-native:containerservice:AgentPool").inputs
    assert pool["nodeLabels"]["accelerator"] == "nvidia"


def test_registry_is_private_and_the_kubelet_may_pull(dev: Plan, prod: Plan) -> None:
    acr = dev.one("azure-native:containerregistry:Registry").inputs
    assert acr["adminUserEnabled"] is False and acr["anonymousPullEnabled"] is False
    assert acr["sku"] == {"name": "Standard"}
    assert prod.one("azure-native:containerregistry:Registry").inputs["sku"] == {"name": "Premium"}
    pulls = [
        r.inputs
        for r in dev.of_type("azure-native:authorization:RoleAssignment")
        if r.inputs["roleDefinitionId"].endswith(ACR_PULL)
    ]
    assert len(pulls) == 1 and pulls[0]["principalId"] == KUBELET_OBJECT_ID
    assert pulls[0]["scope"].endswith(f"/registries/{acr['registryName']}")


def test_push_token_is_scoped_to_our_repositories() -> None:
    p = provisioned("azure-dev")
    scope = p.plan.one("azure-native:containerregistry:ScopeMap").inputs
    assert sorted(scope["actions"]) == sorted(push_actions())
    assert all(
        a.startswith(("repositories/tritonform-triton/", "repositories/tritonform-gateway/"))
        for a in scope["actions"]
    )
    token = p.plan.one("azure-native:containerregistry:Token").inputs
    assert token["scopeMapId"].endswith("/scopeMaps/tritonform-push") and token["status"] == "enabled"
    registry = p.platform.registry
    assert p.value(registry.username) == "tritonform-push"
    assert p.value(registry.password) == ACR_TOKEN_PASSWORD
    assert p.value(registry.address).endswith(".azurecr.io")


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
