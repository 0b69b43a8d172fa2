"""GCP stack via the real program under mocks: VPC + NAT, private GKE, GPU pool, GCS, Workload Identity."""

from __future__ import annotations

import ipaddress
import json

import pytest

from infra.offline import Plan
from infra.platform.gcp import gke_ranges
from infra.platform.kubeconfigs import gke_kubeconfig
from tests.infra.test_platform_contract import provisioned


@pytest.fixture
def dev() -> Plan:
    return provisioned("gcp-dev").plan


@pytest.fixture
def prod() -> Plan:
    return provisioned("gcp-prod").plan


def _pool(plan: Plan, key: str) -> dict:
    return plan.one("gcp:container/nodePool:NodePool", f"{plan.settings.name}-{key}").inputs


def test_provider_project_region_and_labels(dev: Plan) -> None:
    provider = dev.one("pulumi:providers:gcp").inputs
    assert provider["project"] == "tritonform-dev" and provider["region"] == "us-central1"
    labels = provider["defaultLabels"]
    labels = json.loads(labels) if isinstance(labels, str) else labels
    assert labels["team"] == "ml-platform" and labels["stack-name"] == "tf-dev"


def test_subnet_has_pod_and_service_ranges_and_private_google_access(dev: Plan) -> None:
    subnet = dev.one("gcp:compute/subnetwork:Subnetwork").inputs
    ranges = {r["rangeName"]: r["ipCidrRange"] for r in subnet["secondaryIpRanges"]}
    assert set(ranges) == {"pods", "services"}
    assert subnet["privateIpGoogleAccess"] is True
    assert dev.one("gcp:compute/network:Network").inputs["autoCreateSubnetworks"] is False
    blocks = [ipaddress.ip_network(c) for c in (subnet["ipCidrRange"], *ranges.values())]
    assert all(b.subnet_of(ipaddress.ip_network("10.60.0.0/16")) for b in blocks)


@pytest.mark.parametrize("cidr", ["10.0.0.0/16", "10.60.0.0/20", "172.16.0.0/12"])
def test_gke_ranges_do_not_overlap(cidr: str) -> None:
    nets = [ipaddress.ip_network(c) for c in gke_ranges(cidr)]
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])


def test_cloud_nat_gives_private_nodes_egress(dev: Plan) -> None:
    nat = dev.one("gcp:compute/routerNat:RouterNat").inputs
    assert nat["router"] == f"{dev.settings.name}-router-a1b2c3d"
    assert nat["sourceSubnetworkIpRangesToNat"] == "ALL_SUBNETWORKS_ALL_IP_RANGES"


def test_cluster_is_private_vpc_native_with_workload_identity(dev: Plan) -> None:
    gke = dev.one("gcp:container/cluster:Cluster").inputs
    assert gke["workloadIdentityConfig"] == {"workloadPool": "tritonform-dev.svc.id.goog"}
    assert gke["privateClusterConfig"]["enablePrivateNodes"] is True
    assert gke["ipAllocationPolicy"] == {
        "clusterSecondaryRangeName": "pods",
        "servicesSecondaryRangeName": "services",
    }
    assert gke["removeDefaultNodePool"] is True and gke["enableShieldedNodes"] is True
    assert gke["releaseChannel"] == {"channel": "REGULAR"} and gke["minMasterVersion"] == "1.31"
    assert gke["masterAuth"]["clientCertificateConfig"] == {"issueClientCertificate": False}


def test_zonal_dev_and_regional_prod(dev: Plan, prod: Plan) -> None:
    assert dev.one("gcp:container/cluster:Cluster").inputs["location"] == "us-central1-a"
    assert prod.one("gcp:container/cluster:Cluster").inputs["location"] == "europe-west4"
    assert "nodeLocations" not in _pool(dev, "gpu")
    assert len(_pool(prod, "gpu")["nodeLocations"]) == 3


def test_endpoint_public_to_allowed_cidrs_in_dev_and_private_in_prod(dev: Plan, prod: Plan) -> None:
    d = dev.one("gcp:container/cluster:Cluster").inputs
    assert d["privateClusterConfig"]["enablePrivateEndpoint"] is False
    assert [b["cidrBlock"] for b in d["masterAuthorizedNetworksConfig"]["cidrBlocks"]] == ["203.0.113.0/24"]
    p = prod.one("gcp:container/cluster:Cluster").inputs
    assert p["privateClusterConfig"]["enablePrivateEndpoint"] is True
    assert p["deletionProtection"] is True


def test_gpu_pool_machine_accelerator_driver_taint_scaling_and_spot(dev: Plan, prod: Plan) -> None:
    pool = _pool(dev, "gpu")
    node = pool["nodeConfig"]
    assert node["machineType"] == "g2-standard-8"
    assert node["guestAccelerators"] == [
        {"type": "nvidia-l4", "count": 1, "gpuDriverInstallationConfig": {"gpuDriverVersion": "DEFAULT"}}
    ]
    assert node["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert node["labels"] == {"tritonform.dev/pool": "gpu"}
    assert node["spot"] is True and node["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    assert pool["autoscaling"]["totalMinNodeCount"] == 0 and pool["autoscaling"]["totalMaxNodeCount"] == 2
    prod_node = _pool(prod, "gpu")["nodeConfig"]
    assert prod_node["spot"] is False and prod_node["guestAccelerators"][0]["count"] == 2


def test_system_pool_is_untainted_and_nodes_use_a_dedicated_service_account(dev: Plan) -> None:
    node = _pool(dev, "system")["nodeConfig"]
    assert "taints" not in node and node["machineType"] == "e2-standard-4"
    assert node["serviceAccount"] == "tf-dev-nodes@tritonform-dev.iam.gserviceaccount.com"
    roles = {r.inputs["role"] for r in dev.of_type("gcp:projects/iAMMember:IAMMember")}
    assert not any("storage" in role or "admin" in role or "editor" in role for role in roles)


def test_bucket_is_uniform_private_versioned_and_expires_old_versions(dev: Plan) -> None:
    bucket = dev.one("gcp:storage/bucket:Bucket").inputs
    assert bucket["uniformBucketLevelAccess"] is True and bucket["publicAccessPrevention"] == "enforced"
    assert bucket["versioning"] == {"enabled": True}
    assert "encryption" not in bucket  # Google-managed keys in dev
    expiry = [r for r in bucket["lifecycleRules"] if r["action"]["type"] == "Delete"]
    assert expiry[0]["condition"]["daysSinceNoncurrentTime"] == 30


def test_prod_bucket_uses_the_configured_cmek_and_grants_the_storage_agent(prod: Plan) -> None:
    key = "projects/tritonform-prod/locations/europe-west4/keyRings/tritonform/cryptoKeys/models"
    assert prod.one("gcp:storage/bucket:Bucket").inputs["encryption"] == {"defaultKmsKeyName": key}
    grant = prod.one("gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember").inputs
    assert grant["cryptoKeyId"] == key and grant["member"].endswith(
        "@gs-project-accounts.iam.gserviceaccount.com"
    )


def test_reader_is_bound_to_the_triton_service_account_and_reads_only_the_bucket(dev: Plan) -> None:
    binding = dev.one("gcp:serviceaccount/iAMMember:IAMMember").inputs
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["member"] == "serviceAccount:tritonform-dev.svc.id.goog[tritonform/triton]"
    assert binding["serviceAccountId"].endswith("/tf-dev-reader@tritonform-dev.iam.gserviceaccount.com")
    grant = dev.one("gcp:storage/bucketIAMMember:BucketIAMMember").inputs
    assert grant["role"] == "roles/storage.objectViewer"
    assert grant["bucket"] == dev.outputs["bucket_uri"].removeprefix("gs://")
    assert grant["member"] == "serviceAccount:tf-dev-reader@tritonform-dev.iam.gserviceaccount.com"


def test_reader_annotation_and_outputs() -> None:
    p = provisioned("gcp-dev")
    email = "tf-dev-reader@tritonform-dev.iam.gserviceaccount.com"
    assert p.value(p.platform.reader.service_account_annotations) == {"iam.gke.io/gcp-service-account": email}
    assert p.plan.outputs["model_reader_identity"] == email
    assert p.plan.outputs["bucket_uri"] == "gs://tf-dev-models-a1b2c3d"


def test_kubeconfig_uses_the_gke_auth_plugin_without_static_credentials() -> None:
    p = provisioned("gcp-dev")
    config = json.loads(p.value(p.platform.cluster.kubeconfig))
    assert config == json.loads(gke_kubeconfig("tf-dev-gke", "34.118.0.10", "Q0VSVElGSUNBVEU="))
    user = config["users"][0]["user"]
    assert user["exec"]["command"] == "gke-gcloud-auth-plugin" and set(user) == {"exec"}
    assert p.plan.one("pulumi:providers:kubernetes").inputs["kubeconfig"] == "[secret]"
