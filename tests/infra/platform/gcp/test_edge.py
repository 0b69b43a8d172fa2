"""GCP edge (gcp/edge.py): the GKE Gateway behind Cloud Armor, reaching the ClusterIP gateway through NEGs."""

from __future__ import annotations

from infra.offline import Plan, PlannedResource
from infra.offline.mocks.gcp import AUTONAME_SUFFIX as AUTONAME
from infra.offline.mocks.gcp import EDGE_IP
from infra.platform.gcp.edge import GOOGLE_FRONT_END_RANGES, armor_threshold
from tests.infra.platform.provisioned import provisioned


def _custom(plan: Plan, kind: str) -> PlannedResource:
    found = plan.of_type(f"kubernetes:{_api(kind)}:{kind}")
    assert len(found) == 1, kind
    return found[0]


def _api(kind: str) -> str:
    return "gateway.networking.k8s.io/v1" if kind in ("Gateway", "HTTPRoute") else "networking.gke.io/v1"


def test_gateway_api_is_enabled_on_the_cluster(dev: Plan) -> None:
    gke = dev.one("gcp:container/cluster:Cluster").inputs
    assert gke["gatewayApiConfig"] == {"channel": "CHANNEL_STANDARD"}


def test_gateway_listens_https_on_the_static_ip_with_the_managed_certificate(dev: Plan) -> None:
    gateway = _custom(dev, "Gateway").inputs
    assert gateway["spec"]["gatewayClassName"] == "gke-l7-global-external-managed"
    assert gateway["spec"]["listeners"] == [{"name": "https", "protocol": "HTTPS", "port": 443}]
    address = dev.one("gcp:compute/globalAddress:GlobalAddress")
    assert address.inputs["addressType"] == "EXTERNAL"
    assert gateway["spec"]["addresses"] == [{"type": "NamedAddress", "value": f"{address.name}-{AUTONAME}"}]
    cert_map = dev.one("gcp:certificatemanager/certificateMap:CertificateMap")
    assert gateway["metadata"]["annotations"] == {"networking.gke.io/certmap": f"{cert_map.name}-{AUTONAME}"}
    hostname = f"{EDGE_IP.replace('.', '-')}.sslip.io"
    cert = dev.one("gcp:certificatemanager/certificate:Certificate").inputs
    assert cert["managed"]["domains"] == [hostname] and cert["scope"] == "DEFAULT"
    entry = dev.one("gcp:certificatemanager/certificateMapEntry:CertificateMapEntry").inputs
    assert entry["hostname"] == hostname and entry["map"] == f"{cert_map.name}-{AUTONAME}"
    assert dev.outputs["endpoint_url"] == f"https://{hostname}"


def test_route_and_policies_target_the_gateway_service(dev: Plan) -> None:
    route = _custom(dev, "HTTPRoute").inputs["spec"]
    gateway = _custom(dev, "Gateway").inputs["metadata"]
    assert route["parentRefs"] == [{"name": gateway["name"]}]
    rule = route["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert rule["backendRefs"] == [{"name": "gateway", "port": 80}]
    for kind in ("GCPBackendPolicy", "HealthCheckPolicy"):
        spec = _custom(dev, kind).inputs["spec"]
        assert spec["targetRef"] == {"group": "", "kind": "Service", "name": "gateway"}
    health = _custom(dev, "HealthCheckPolicy").inputs["spec"]["default"]["config"]
    assert health["httpHealthCheck"]["requestPath"] == "/readyz"


def test_backend_policy_outlasts_streams_and_attaches_cloud_armor(dev: Plan) -> None:
    default = _custom(dev, "GCPBackendPolicy").inputs["spec"]["default"]
    assert default["timeoutSec"] > dev.settings.edge.stream_timeout_seconds
    armor = dev.one("gcp:compute/securityPolicy:SecurityPolicy")
    assert default["securityPolicy"] == f"{armor.name}-{AUTONAME}"


def test_cloud_armor_allows_client_cidrs_throttles_per_key_and_denies_the_rest(dev: Plan) -> None:
    armor = dev.one("gcp:compute/securityPolicy:SecurityPolicy").inputs
    assert armor["type"] == "CLOUD_ARMOR"
    rules = sorted(armor["rules"], key=lambda r: r["priority"])
    throttle, default = rules[0], rules[-1]
    assert throttle["action"] == "throttle"
    assert throttle["match"]["config"]["srcIpRanges"] == ["203.0.113.0/24"]
    limit = throttle["rateLimitOptions"]
    assert (limit["enforceOnKey"], limit["enforceOnKeyName"]) == ("HTTP_HEADER", "Authorization")
    assert (limit["conformAction"], limit["exceedAction"]) == ("allow", "deny(429)")
    count, interval = armor_threshold(dev.settings.edge.rate_limit_per_second, dev.settings.edge.burst)
    assert limit["rateLimitThreshold"] == {"count": count, "intervalSec": interval}
    assert count / interval == dev.settings.edge.rate_limit_per_second
    assert default["priority"] == 2147483647 and default["action"] == "deny(403)"
    assert default["match"]["config"]["srcIpRanges"] == ["*"]


def test_armor_threshold_uses_a_window_cloud_armor_accepts() -> None:
    assert armor_threshold(50, 100) == (500, 10)
    assert armor_threshold(1, 100) == (120, 120)


def test_firewall_admits_only_google_front_ends_to_the_gateway_port(dev: Plan) -> None:
    rule = dev.one("gcp:compute/firewall:Firewall").inputs
    assert sorted(rule["sourceRanges"]) == sorted(GOOGLE_FRONT_END_RANGES)
    assert rule["allows"] == [{"protocol": "tcp", "ports": ["8080"]}]
    assert rule["targetServiceAccounts"] == ["tf-dev-nodes@your-project-id.iam.gserviceaccount.com"]


def test_gateway_service_is_cluster_ip_reached_from_google_front_ends() -> None:
    p = provisioned("gcp-dev")
    services = [r for r in p.plan.of_type("kubernetes:core/v1:Service") if r.name == "gateway"]
    assert services and services[0].inputs["spec"]["type"] == "ClusterIP"


def test_gateway_takes_a_tls_1_2_ssl_policy_through_a_gcp_gateway_policy(dev: Plan) -> None:
    ssl = dev.one("gcp:compute/sSLPolicy:SSLPolicy")
    assert ssl.inputs["minTlsVersion"] == "TLS_1_2" and ssl.inputs["profile"] in ("MODERN", "RESTRICTED")
    policy = _custom(dev, "GCPGatewayPolicy").inputs
    gateway = _custom(dev, "Gateway").inputs["metadata"]
    assert policy["apiVersion"] == "networking.gke.io/v1"
    assert policy["metadata"]["namespace"] == gateway["namespace"]
    assert policy["spec"] == {
        "default": {"sslPolicy": f"{ssl.name}-{AUTONAME}"},
        "targetRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway["name"]},
    }


def test_managed_certificate_uses_load_balancer_authorization_for_one_sslip_io_label(dev: Plan) -> None:
    # sslip.io names are not ours to put DNS authorisations under: the certificate must be authorised by
    # the load balancer serving the name, and the name one label (no wildcard certificate for it).
    managed = dev.one("gcp:certificatemanager/certificate:Certificate").inputs["managed"]
    assert "dnsAuthorizations" not in managed and "issuanceConfig" not in managed
    (domain,) = managed["domains"]
    label, _, parent = domain.partition(".")
    assert parent == "sslip.io" and label.replace("-", "").isdigit() and "*" not in domain
