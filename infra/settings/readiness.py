"""Whether a stack that parses is ready for `pulumi up`: no example value left in it, a Kubernetes version
its cloud still creates.

The example stacks in `stacks/` hold documentation values: the RFC 5737 address ranges, the AWS
documentation account, placeholder project ids and object ids. Deployed, they lock the deployer out of
the Kubernetes API (every Helm release and object then times out) and make the edge refuse every real
client. `check_readiness` names each such key with how to set it; the Pulumi program refuses to run
while any is left, and `tritonform plan` shows them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import date

from infra.catalog import check_kubernetes_version, cluster_autoscaler_problem
from infra.settings.stack import NAMESPACE, StackSettings

# RFC 5737 (IPv4) and RFC 3849 (IPv6): reserved for documentation, never a real network.
DOCUMENTATION_RANGES = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
# Account ids the AWS documentation uses in its examples.
AWS_EXAMPLE_ACCOUNTS = ("111122223333", "123456789012", "444455556666")
# The example stacks' GCP project ids start with this.
GCP_EXAMPLE_PROJECT_PREFIX = "your-"
# Object ids no directory issues: the all-zero prefix and the counting example.
_EXAMPLE_GUID = re.compile(
    r"^(00000000-0000-0000-0000-[0-9a-f]{12}|11111111-2222-3333-4444-555555555555)$", re.I
)
_GUID_IN_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
MY_ADDRESS = '"$(curl -s https://checkip.amazonaws.com)/32"'


@dataclass(frozen=True)
class Readiness:
    """`blockers` stop `pulumi up` (and make `plan` exit 2); `warnings` are shown and do not."""

    blockers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.blockers


def _documentation_cidrs(cidrs: tuple[str, ...]) -> list[str]:
    found = []
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        if any(network.version == doc.version and network.overlaps(doc) for doc in DOCUMENTATION_RANGES):
            found.append(cidr)
    return found


def _cidr_blockers(settings: StackSettings) -> list[str]:
    blockers = []
    api = _documentation_cidrs(settings.cluster.endpoint_allowed_cidrs)
    if api and settings.api_public:
        blockers.append(
            f"{NAMESPACE}:cluster.endpointAllowedCidrs holds {', '.join(api)}, a documentation-only range: "
            "the machine running `pulumi up` could not reach the Kubernetes API and every object would "
            "time out. Set your own address: pulumi config set --path "
            f"'{NAMESPACE}:cluster.endpointAllowedCidrs[0]' {MY_ADDRESS}"
        )
    clients = _documentation_cidrs(settings.allowed_client_cidrs)
    if clients:
        blockers.append(
            f"{NAMESPACE}:allowedClientCidrs holds {', '.join(clients)}, a documentation-only range: the "
            "edge would refuse every real client. Set the networks your clients call from: pulumi config "
            f"set --path '{NAMESPACE}:allowedClientCidrs[0]' {MY_ADDRESS}"
        )
    return blockers


def _id_blockers(settings: StackSettings) -> list[str]:
    blockers = []
    kms_key = settings.bucket.kms_key or ""
    if any(f":{account}:" in kms_key for account in AWS_EXAMPLE_ACCOUNTS):
        blockers.append(
            f"{NAMESPACE}:bucket.kmsKey is the AWS documentation's example key ({kms_key}); set the ARN "
            "of your KMS key (aws kms describe-key --key-id alias/NAME --query KeyMetadata.Arn) or remove "
            "the key to use S3-managed encryption"
        )
    if settings.gcp is not None and settings.gcp.project.startswith(GCP_EXAMPLE_PROJECT_PREFIX):
        blockers.append(
            f"{NAMESPACE}:gcp.project is the example's placeholder {settings.gcp.project!r}; set your "
            f"project id: pulumi config set --path '{NAMESPACE}:gcp.project' "
            '"$(gcloud config get-value project)"'
        )
    if settings.gcp is not None and f"projects/{GCP_EXAMPLE_PROJECT_PREFIX}" in kms_key:
        blockers.append(
            f"{NAMESPACE}:bucket.kmsKey names the example's placeholder project ({kms_key}); set your Cloud "
            "KMS key (gcloud kms keys list --keyring RING --location LOCATION) or remove it"
        )
    if settings.azure is not None:
        examples = [g for g in settings.azure.admin_group_object_ids if _EXAMPLE_GUID.match(g)]
        if examples:
            blockers.append(
                f"{NAMESPACE}:azure.adminGroupObjectIds holds the example id {', '.join(examples)}; set your "
                "admin group's object id (az ad group show --group NAME --query id -o tsv)"
            )
        if any(_EXAMPLE_GUID.match(found) for found in _GUID_IN_TEXT.findall(kms_key)):
            blockers.append(
                f"{NAMESPACE}:bucket.kmsKey names the example subscription ({kms_key}); set your Key Vault "
                "key's id (az keyvault key show --vault-name VAULT --name KEY --query key.kid) or remove it"
            )
    return blockers


def _autoscaler_blockers(settings: StackSettings) -> list[str]:
    """Where the stack installs the cluster autoscaler (EKS), its image must be the release of the cluster's
    minor (said only of a minor the cloud still creates; the version's own blocker covers the others)."""
    problem = cluster_autoscaler_problem(settings.cloud, settings.cluster.kubernetes_version)
    return [problem] if problem is not None else []


def check_readiness(settings: StackSettings, today: date) -> Readiness:
    """Everything that would make a first `pulumi up` of these settings fail or lock people out."""
    gke_channel = settings.gcp.release_channel if settings.gcp is not None else None
    version = check_kubernetes_version(
        settings.cloud, settings.cluster.kubernetes_version, today, gke_channel
    )
    warnings = list(version.warnings)
    if settings.azure is not None and settings.azure.apim_publisher_email.endswith("@example.com"):
        warnings.append(
            f"{NAMESPACE}:azure.apimPublisherEmail is {settings.azure.apim_publisher_email}: API "
            "Management's service notifications would go nowhere; set your team's address"
        )
    if settings.triton_min_replicas == 0 and settings.gpu_pool.min_nodes > 0:
        warnings.append(
            f"{NAMESPACE}:triton.minReplicas is 0 but gpuPool.minNodes is {settings.gpu_pool.min_nodes}: "
            "Triton goes to zero when idle, yet the GPU node(s) stay up with nothing on them; set "
            f"gpuPool.minNodes to 0 (pulumi config set --path '{NAMESPACE}:gpuPool.minNodes' 0)"
        )
    blockers = [*version.errors, *_cidr_blockers(settings), *_id_blockers(settings)]
    if not version.errors:
        blockers += _autoscaler_blockers(settings)
    return Readiness(blockers=tuple(blockers), warnings=tuple(warnings))
