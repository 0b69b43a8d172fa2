"""The catalogue per cloud: GPU machine types (what each carries and costs) and the Kubernetes versions
each managed service creates, with the dates their support ends.

Plain data, no cloud SDK imports, so settings validation and cost figures stay cheap.
Prices are public list prices (USD per hour, on-demand, one common region) and are
only used for the estimates that `tritonform plan` prints; they are labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

CloudName = Literal["aws", "gcp", "azure"]
CLOUDS: tuple[CloudName, ...] = ("aws", "gcp", "azure")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU as the fit and throughput estimates see it: memory per GPU and its peak memory bandwidth.

    `memory_gib` is the nominal size NVIDIA sells it as ("80 GB" parts hold 80 GiB; the driver reports
    slightly less, which the fit model's usable fraction covers); `bandwidth_gb_s` is the datasheet peak.
    """

    name: str
    memory_gib: float
    bandwidth_gb_s: float
    source: str


# Each figure from NVIDIA's datasheet for the part (A10G, AWS's variant of the A10: the same memory and
# bandwidth, per Baseten's "NVIDIA A10 vs A10G" comparison). Read 2026-12-01.
_NVIDIA = "NVIDIA data-center GPU datasheet"
T4 = GpuSpec("T4 16GB", 16, 320, f"{_NVIDIA} (T4)")
A10G = GpuSpec("A10G 24GB", 24, 600, "baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference")
L4 = GpuSpec("L4 24GB", 24, 300, f"{_NVIDIA} (L4)")
L40S = GpuSpec("L40S 48GB", 48, 864, f"{_NVIDIA} (L40S)")
A100_40 = GpuSpec("A100 SXM4 40GB", 40, 1555, f"{_NVIDIA} (A100, 40GB HBM2)")
A100_80_SXM = GpuSpec("A100 SXM4 80GB", 80, 2039, f"{_NVIDIA} (A100 80GB SXM)")
A100_80_PCIE = GpuSpec("A100 PCIe 80GB", 80, 1935, f"{_NVIDIA} (A100 80GB PCIe)")
H100_SXM = GpuSpec("H100 SXM 80GB", 80, 3350, f"{_NVIDIA} (H100 SXM)")
H100_NVL = GpuSpec("H100 NVL 94GB", 94, 3900, f"{_NVIDIA} (H100 NVL)")
H200 = GpuSpec("H200 141GB", 141, 4800, f"{_NVIDIA} (H200)")


@dataclass(frozen=True)
class GpuMachine:
    """One GPU machine type: how many GPUs of which model, which GPU that is, and its list price."""

    name: str
    gpus: int
    gpu_model: str  # the cloud's own name for the GPU (GCP: the accelerator type)
    vcpus: int
    memory_gib: int
    usd_per_hour: float
    gpu: GpuSpec

    @property
    def gpu_memory_gib(self) -> float:
        """Memory of one of its GPUs."""
        return self.gpu.memory_gib

    @property
    def hbm_bandwidth_gb_s(self) -> float:
        """Peak memory bandwidth of one of its GPUs (GB/s)."""
        return self.gpu.bandwidth_gb_s


def _table(*machines: GpuMachine) -> dict[str, GpuMachine]:
    return {m.name: m for m in machines}


# Prices: on-demand Linux list prices per hour in one common region (AWS us-east-1, GCP us-central1, Azure
# eastus), as the clouds' pricing pages showed them; checked on PRICES_CHECKED against the hyperscaler
# table datareceipts/data-receipts 109-gpu-pricing/hyperscalers.json (retrieved 2026-11-09) where it lists
# the type. Spot capacity bills below these.
# AWS: NVIDIA GPU instance types that run the EKS accelerated AMIs (x86_64).
AWS_GPU_MACHINES = _table(
    GpuMachine("g4dn.xlarge", 1, "T4", 4, 16, 0.526, T4),
    GpuMachine("g4dn.2xlarge", 1, "T4", 8, 32, 0.752, T4),
    GpuMachine("g4dn.12xlarge", 4, "T4", 48, 192, 3.912, T4),
    GpuMachine("g5.xlarge", 1, "A10G", 4, 16, 1.006, A10G),
    GpuMachine("g5.2xlarge", 1, "A10G", 8, 32, 1.212, A10G),
    GpuMachine("g5.4xlarge", 1, "A10G", 16, 64, 1.624, A10G),
    GpuMachine("g5.12xlarge", 4, "A10G", 48, 192, 5.672, A10G),
    GpuMachine("g5.48xlarge", 8, "A10G", 192, 768, 16.288, A10G),
    GpuMachine("g6.xlarge", 1, "L4", 4, 16, 0.805, L4),
    GpuMachine("g6.2xlarge", 1, "L4", 8, 32, 0.978, L4),
    GpuMachine("g6.12xlarge", 4, "L4", 48, 192, 4.602, L4),
    GpuMachine("g6e.xlarge", 1, "L40S", 4, 32, 1.861, L40S),
    GpuMachine("g6e.12xlarge", 4, "L40S", 48, 384, 10.493, L40S),
    GpuMachine("p4d.24xlarge", 8, "A100", 96, 1152, 21.958, A100_40),
    GpuMachine("p5.48xlarge", 8, "H100", 192, 2048, 55.04, H100_SXM),
)
AWS_GPU_FAMILIES = frozenset(name.split(".")[0] for name in AWS_GPU_MACHINES)

# GCP: machine types with attached or built-in NVIDIA accelerators, keyed by machine type.
GCP_GPU_MACHINES = _table(
    GpuMachine("n1-standard-4", 1, "nvidia-tesla-t4", 4, 15, 0.54, T4),
    GpuMachine("n1-standard-8", 1, "nvidia-tesla-t4", 8, 30, 0.73, T4),
    GpuMachine("g2-standard-4", 1, "nvidia-l4", 4, 16, 0.71, L4),
    GpuMachine("g2-standard-8", 1, "nvidia-l4", 8, 32, 0.85, L4),
    GpuMachine("g2-standard-24", 2, "nvidia-l4", 24, 96, 2.00, L4),
    GpuMachine("a2-highgpu-1g", 1, "nvidia-tesla-a100", 12, 85, 3.67, A100_40),
    GpuMachine("a2-ultragpu-1g", 1, "nvidia-a100-80gb", 12, 170, 5.07, A100_80_SXM),
    GpuMachine("a3-highgpu-8g", 8, "nvidia-h100-80gb", 208, 1872, 88.25, H100_SXM),
)
GCP_ACCELERATORS = frozenset(m.gpu_model for m in GCP_GPU_MACHINES.values())

# Azure: NVIDIA GPU VM sizes.
AZURE_GPU_MACHINES = _table(
    GpuMachine("Standard_NC4as_T4_v3", 1, "T4", 4, 28, 0.526, T4),
    GpuMachine("Standard_NC8as_T4_v3", 1, "T4", 8, 56, 0.752, T4),
    GpuMachine("Standard_NC64as_T4_v3", 4, "T4", 64, 440, 4.352, T4),
    GpuMachine("Standard_NC24ads_A100_v4", 1, "A100", 24, 220, 3.673, A100_80_PCIE),
    GpuMachine("Standard_NC48ads_A100_v4", 2, "A100", 48, 440, 7.346, A100_80_PCIE),
    GpuMachine("Standard_NC40ads_H100_v5", 1, "H100", 40, 320, 6.98, H100_NVL),
    GpuMachine("Standard_ND96asr_v4", 8, "A100", 96, 900, 27.197, A100_40),
)

GPU_MACHINES: dict[CloudName, dict[str, GpuMachine]] = {
    "aws": AWS_GPU_MACHINES,
    "gcp": GCP_GPU_MACHINES,
    "azure": AZURE_GPU_MACHINES,
}


def gpu_machine(cloud: CloudName, machine_type: str) -> GpuMachine | None:
    """The catalogue entry for a machine type, or None when it is not a known GPU machine."""
    return GPU_MACHINES[cloud].get(machine_type)


# --- Kubernetes versions ---------------------------------------------------------------------------
# What each managed service creates, read from each cloud's calendar on KUBERNETES_CALENDAR_CHECKED.
# Update these rows (and DEFAULT_KUBERNETES_VERSION) from the sources when a cloud publishes new dates;
# `tritonform plan` warns once the check is older than KUBERNETES_CALENDAR_MAX_AGE.
KUBERNETES_CALENDAR_CHECKED = date(2026, 12, 1)
KUBERNETES_CALENDAR_MAX_AGE = timedelta(days=120)
# The newest minor all three services offer in standard support with the longest shared runway
# (EKS until 2027-08-02, AKS until 2027-06-30, GKE REGULAR); GKE STABLE lags one minor behind.
DEFAULT_KUBERNETES_VERSION = "1.36"
# How long before the end of standard support `plan` starts to warn.
KUBERNETES_WARN_BEFORE = timedelta(days=60)

EKS_CALENDAR = "EKS user guide, Kubernetes version lifecycle (release calendar), read 2026-12-01"
AKS_CALENDAR = "AKS docs, supported Kubernetes versions (AKS release calendar, ms.date 2026-08-05)"
GKE_CALENDAR = "GKE release notes, current versions per channel (Sep/Oct 2026) and endoflife.date/gke"


@dataclass(frozen=True)
class KubernetesRelease:
    """One Kubernetes minor on one managed service.

    `standard_until`: the last day of standard support. `creatable_until`: the last day the service still
    creates a cluster on it without an extra support plan (EKS: the end of extended support, at six times
    the control-plane price; AKS and GKE: the end of standard support). `estimated`: a date derived from
    the service's rule (EKS and GKE: 14 months of standard support) where the calendar gave none.
    """

    minor: str
    standard_until: date
    creatable_until: date
    source: str
    estimated: bool = False


def _releases(*releases: KubernetesRelease) -> dict[str, KubernetesRelease]:
    return {r.minor: r for r in releases}


KUBERNETES_RELEASES: dict[CloudName, dict[str, KubernetesRelease]] = {
    "aws": _releases(
        KubernetesRelease("1.33", date(2026, 7, 29), date(2027, 7, 29), EKS_CALENDAR),
        KubernetesRelease("1.34", date(2026, 12, 2), date(2027, 12, 2), EKS_CALENDAR),
        KubernetesRelease("1.35", date(2027, 3, 27), date(2028, 3, 27), EKS_CALENDAR),
        KubernetesRelease("1.36", date(2027, 8, 2), date(2028, 8, 2), EKS_CALENDAR),
        KubernetesRelease("1.37", date(2027, 12, 2), date(2028, 12, 2), EKS_CALENDAR, estimated=True),
    ),
    "azure": _releases(
        KubernetesRelease("1.35", date(2027, 3, 31), date(2027, 3, 31), AKS_CALENDAR),
        KubernetesRelease("1.36", date(2027, 6, 30), date(2027, 6, 30), AKS_CALENDAR),
        KubernetesRelease("1.37", date(2027, 10, 31), date(2027, 10, 31), AKS_CALENDAR, estimated=True),
    ),
    "gcp": _releases(
        KubernetesRelease("1.35", date(2027, 2, 28), date(2027, 2, 28), GKE_CALENDAR),
        KubernetesRelease("1.36", date(2027, 7, 31), date(2027, 7, 31), GKE_CALENDAR, estimated=True),
        KubernetesRelease("1.37", date(2027, 10, 31), date(2027, 10, 31), GKE_CALENDAR, estimated=True),
    ),
}
# GKE creates a cluster only on a minor its release channel offers (the version is the channel's minimum).
GKE_CHANNEL_MINORS: dict[str, tuple[str, ...]] = {
    "RAPID": ("1.35", "1.36", "1.37"),
    "REGULAR": ("1.35", "1.36"),
    "STABLE": ("1.35",),
    "EXTENDED": ("1.35", "1.36"),
}
MANAGED_KUBERNETES: dict[CloudName, str] = {"aws": "EKS", "gcp": "GKE", "azure": "AKS"}


@dataclass(frozen=True)
class VersionCheck:
    """What `plan` says about a stack's Kubernetes version: errors stop it, warnings do not."""

    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def check_kubernetes_version(
    cloud: CloudName, minor: str, today: date, gke_channel: str | None = None
) -> VersionCheck:
    """Whether `cloud` creates a cluster on `minor` today, and whether its support ends soon."""
    service = MANAGED_KUBERNETES[cloud]
    key = "tritonform:cluster.kubernetesVersion"
    creatable = [r for r in KUBERNETES_RELEASES[cloud].values() if today <= r.creatable_until]
    if cloud == "gcp" and gke_channel is not None:
        creatable = [r for r in creatable if r.minor in GKE_CHANNEL_MINORS.get(gke_channel, ())]
    choices = ", ".join(f"{r.minor} (standard support until {r.standard_until})" for r in creatable)
    release = KUBERNETES_RELEASES[cloud].get(minor)
    where = f"{service}'s {gke_channel} channel" if cloud == "gcp" and gke_channel else service
    if release is None or release not in creatable:
        ended = f" (its support ended {release.creatable_until})" if release is not None else ""
        return VersionCheck(
            errors=(f"{key}: {where} no longer creates clusters on {minor}{ended}; use {choices}",)
        )
    warnings = []
    if today > release.standard_until:
        warnings.append(
            f"{key}: {minor} is in {service}'s extended support since {release.standard_until} (a higher "
            f"control-plane price) until {release.creatable_until}; move to {choices}"
        )
    elif release.standard_until - today <= KUBERNETES_WARN_BEFORE:
        warnings.append(
            f"{key}: {service}'s standard support for {minor} ends {release.standard_until} "
            f"(in {(release.standard_until - today).days} days); plan the upgrade"
        )
    if today - KUBERNETES_CALENDAR_CHECKED > KUBERNETES_CALENDAR_MAX_AGE:
        warnings.append(
            f"the Kubernetes support dates in infra/catalog.py were read on {KUBERNETES_CALENDAR_CHECKED}; "
            f"check {service}'s calendar and update them"
        )
    return VersionCheck(warnings=tuple(warnings))


# --- Triton releases and workload identities ---------------------------------------------------------
# The first NGC Triton release (nvcr.io/nvidia/tritonserver:<release>-py3) that reads the model bucket with
# the workload identity a cloud's pods get; clouds not listed work with every release settings accept.
# Azure: AZURE_STORAGE_AUTH_TYPE (`default` = DefaultAzureCredential, which reads the federated token) is in
# triton-inference-server/core r26.05 (src/filesystem/implementations/as.h) and not in r26.04; release notes
# of 2.69.0 = NGC 26.05. Before it, Triton reads Blob storage with an account key only.
TRITON_WORKLOAD_IDENTITY_RELEASES: dict[CloudName, str] = {"azure": "26.05"}
# The newest release tagged in triton-inference-server/server (v2.71.0 = 26.07, read 2026-12-01).
DEFAULT_TRITON_RELEASE = "26.07"


# --- AWS: cluster-autoscaler images and WAF managed rules -------------------------------------------
# The cluster-autoscaler release whose minor matches each Kubernetes minor (its image only supports its
# own minor): the newest patch tag of each release branch in kubernetes/autoscaler, read 2026-12-01 from
# the repository's tags (cluster-autoscaler-1.36.1 etc., all four tagged 2026-07-22). No 1.37 release
# was tagged by then: a 1.37 EKS stack waits for one (add it here with its tag date).
CLUSTER_AUTOSCALER_SOURCE = "kubernetes/autoscaler release tags, read 2026-12-01"
CLUSTER_AUTOSCALER_IMAGE = "registry.k8s.io/autoscaling/cluster-autoscaler"
CLUSTER_AUTOSCALER_TAGS: dict[str, str] = {
    "1.33": "v1.33.6",
    "1.34": "v1.34.5",
    "1.35": "v1.35.2",
    "1.36": "v1.36.1",
}


def cluster_autoscaler_tag(minor: str) -> str | None:
    """The cluster-autoscaler image tag for a Kubernetes minor, or None when no release matches it."""
    return CLUSTER_AUTOSCALER_TAGS.get(minor)


# The clouds whose managed Kubernetes scales node groups only with a cluster autoscaler the stack installs
# (GKE and AKS run their own).
INSTALLS_CLUSTER_AUTOSCALER: frozenset[CloudName] = frozenset({"aws"})


def cluster_autoscaler_problem(cloud: CloudName, minor: str) -> str | None:
    """Why a `cloud` cluster on `minor` cannot get a matching cluster-autoscaler (naming the choices), or None
    (also when the cloud runs its own)."""
    if cloud not in INSTALLS_CLUSTER_AUTOSCALER or minor in CLUSTER_AUTOSCALER_TAGS:
        return None
    known = ", ".join(f"{m} ({tag})" for m, tag in CLUSTER_AUTOSCALER_TAGS.items())
    return (
        f"tritonform:cluster.kubernetesVersion is {minor}, for which infra/catalog.py knows no "
        f"cluster-autoscaler release (each release supports only its own minor): use one of {known}, or "
        f"add the {minor} image tag to CLUSTER_AUTOSCALER_TAGS once kubernetes/autoscaler releases it"
    )


# The rules of AWS WAF's core rule set (AWSManagedRulesCommonRuleSet), as the AWS WAF developer guide's
# "Baseline rule groups" page lists them (read 2026-12-01): the names a web ACL may override.
AWS_COMMON_RULE_SET = "AWSManagedRulesCommonRuleSet"
AWS_COMMON_RULE_SET_RULES = frozenset(
    {
        "NoUserAgent_HEADER",
        "UserAgent_BadBots_HEADER",
        "SizeRestrictions_QUERYSTRING",
        "SizeRestrictions_Cookie_HEADER",
        "SizeRestrictions_BODY",
        "SizeRestrictions_URIPATH",
        "EC2MetaDataSSRF_BODY",
        "EC2MetaDataSSRF_COOKIE",
        "EC2MetaDataSSRF_URIPATH",
        "EC2MetaDataSSRF_QUERYARGUMENTS",
        "GenericLFI_QUERYARGUMENTS",
        "GenericLFI_URIPATH",
        "GenericLFI_BODY",
        "RestrictedExtensions_URIPATH",
        "RestrictedExtensions_QUERYARGUMENTS",
        "GenericRFI_QUERYARGUMENTS",
        "GenericRFI_BODY",
        "GenericRFI_URIPATH",
        "CrossSiteScripting_COOKIE",
        "CrossSiteScripting_QUERYARGUMENTS",
        "CrossSiteScripting_BODY",
        "CrossSiteScripting_URIPATH",
    }
)


# --- Prices of what a stack runs besides the GPU pool ------------------------------------------------
# What `tritonform plan` adds up in its `cost` block. USD per hour, on-demand list prices in the same
# regions as the GPU tables above, read on PRICES_CHECKED from each cloud's pricing page (as quoted by the
# sources named): usage-priced parts (per request, per GB) are left out and named in the plan's notes.
PRICES_CHECKED = date(2026, 12, 1)
PRICES_SOURCE = {
    "aws": "aws.amazon.com/ec2/pricing/on-demand, /vpc/pricing (NAT $0.045/h, cloudburn.io/blog/"
    "aws-nat-gateway-pricing), /elasticloadbalancing/pricing, /eks/pricing, us-east-1",
    "gcp": "cloud.google.com/compute/vm-instance-pricing, /nat/pricing, /vpc/network-pricing (forwarding "
    "rules), /armor/pricing, /kubernetes-engine/pricing, us-central1",
    "azure": "azure.microsoft.com/pricing: virtual-machines/linux, load-balancer, ip-addresses, kubernetes-"
    "service, api-management (Developer ~$48/month, Premium ~$2,795/month; microsoftnegotiations.com/blog/"
    "azure-api-management-licensing), eastus",
}

# System-pool machine types (CPU nodes for add-ons and the gateway).
SYSTEM_MACHINE_PRICES: dict[CloudName, dict[str, float]] = {
    "aws": {
        "m6i.large": 0.096,
        "m6i.xlarge": 0.192,
        "m6i.2xlarge": 0.384,
        "m7i.large": 0.1008,
        "m7i.xlarge": 0.2016,
        "m5.large": 0.096,
        "m5.xlarge": 0.192,
    },
    "gcp": {
        "e2-standard-2": 0.067,
        "e2-standard-4": 0.134,
        "e2-standard-8": 0.268,
        "n2-standard-4": 0.194,
        "n2-standard-8": 0.388,
    },
    "azure": {
        "Standard_D2s_v5": 0.096,
        "Standard_D4s_v5": 0.192,
        "Standard_D8s_v5": 0.384,
    },
}


@dataclass(frozen=True)
class FixedPrices:
    """Hourly list prices of one cloud's always-on parts outside the node pools.

    `control_plane`: the managed Kubernetes fee (dev/prod differ on AKS: Free vs Standard tier).
    `nat_gateway`: one NAT gateway (AWS: per gateway; GCP Cloud NAT: per VM, `nat_per_vm`, capped).
    `load_balancer`: the entry load balancer's hourly part (LCUs / data are usage). `api_gateway`: the
    managed API entry's hourly part by tier (AWS REST API is per request only: 0).
    """

    control_plane_dev: float
    control_plane_prod: float
    nat_gateway: float
    nat_per_vm: float
    nat_per_vm_cap: float
    load_balancer: float
    api_gateway: dict[str, float]
    # One tier of `api_gateway` by environment (the rest of the dict are alternatives); empty: every part
    # of `api_gateway` is always on and they add up.
    api_gateway_tier_by_environment: dict[str, str] = field(default_factory=dict)


FIXED_PRICES: dict[CloudName, FixedPrices] = {
    # EKS $0.10/h per cluster; NAT gateway $0.045/h; NLB $0.0225/h (+ NLCU usage); REST API per request
    # ($3.50/million) and WAF web ACL $5/month + $1/rule/month.
    "aws": FixedPrices(0.10, 0.10, 0.045, 0.0, 0.0, 0.0225, {"rest": 0.0, "waf": 0.0137}),
    # GKE cluster fee $0.10/h; Cloud NAT $0.0014 per VM-hour up to $0.044/h; global external Application
    # LB forwarding rule $0.025/h; Cloud Armor policy $5/month.
    "gcp": FixedPrices(0.10, 0.10, 0.0, 0.0014, 0.044, 0.025, {"cloud-armor": 0.0068}),
    # AKS Free tier (dev) / Standard tier $0.10/h (prod); outbound through the Standard LB (no NAT gateway);
    # Standard LB first 5 rules $0.025/h; APIM one unit: Developer ~$48/month, Premium ~$2,795/month.
    "azure": FixedPrices(
        0.0,
        0.10,
        0.0,
        0.0,
        0.0,
        0.025,
        {"Developer": 0.0658, "Premium": 3.829},
        {"dev": "Developer", "prod": "Premium"},
    ),
}
