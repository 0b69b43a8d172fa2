"""Cloud-only settings blocks (`tritonform:gcp`, `tritonform:azure`), part of the one settings layer."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from infra.catalog import AWS_COMMON_RULE_SET_RULES
from infra.settings.base import Settings as _Settings
from infra.settings.base import check_cidr as _check_cidr

_GCP_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class GcpSettings(_Settings):
    """GCP-only settings."""

    project: str = Field(description="GCP only: project id the stack deploys into.")
    zonal: bool = Field(
        default=False,
        description="GCP only: one zonal cluster in `gcp.zone` (cheaper, no zone redundancy), not regional.",
    )
    zone: str | None = Field(
        default=None, description="GCP only: the zone of a zonal cluster (e.g. us-central1-a)."
    )
    release_channel: Literal["RAPID", "REGULAR", "STABLE", "EXTENDED"] = Field(
        default="REGULAR",
        description="GCP only: GKE release channel (cluster.kubernetesVersion is the minimum).",
    )
    domain: str | None = Field(
        default=None,
        description="GCP only: DNS name of the public endpoint (an A record to output `edge_ip` issues its "
        "Google-managed certificate); unset: `<ip>.sslip.io`, fine for dev only.",
    )

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        if not _GCP_PROJECT.match(value):
            raise ValueError(
                "must be a GCP project id: 6-30 lowercase letters, digits or '-', starting with a letter"
            )
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not _DOMAIN.match(value):
            raise ValueError("must be a lowercase DNS name such as api.example.com (no scheme, no port)")
        return value

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$", value):
            raise ValueError("must be a GCP zone such as us-central1-a")
        return value

    @model_validator(mode="after")
    def _zone_when_zonal(self) -> GcpSettings:
        if self.zonal and self.zone is None:
            raise ValueError("zone: a zonal cluster (zonal: true) needs `zone`, e.g. us-central1-a")
        if not self.zonal and self.zone is not None:
            raise ValueError("zone: only used with zonal: true; a regional cluster spans the region's zones")
        return self


class AzureSettings(_Settings):
    """Azure-only settings."""

    spot_max_price: float = Field(
        default=-1, description="Azure only: highest USD/hour for a Spot GPU node; -1 pays up to on-demand."
    )
    resource_group: str | None = Field(
        default=None, description="Azure only: resource group the stack creates; unset means `<name>-rg`."
    )
    admin_group_object_ids: tuple[str, ...] = Field(
        default=(), description="Azure only: Entra ID groups whose members are AKS cluster admins."
    )
    deployer_principal_type: Literal["User", "ServicePrincipal", "Group"] = Field(
        default="User",
        description="Azure only: kind of principal running `pulumi up` (it gets AKS RBAC cluster admin).",
    )
    pod_cidr: str = Field(
        default="192.168.0.0/16", description="Azure only: CNI overlay pod range (outside network.cidr)."
    )
    service_cidr: str = Field(
        default="172.16.0.0/16", description="Azure only: Kubernetes service range (outside network.cidr)."
    )
    apim_sku: Literal["Developer", "Premium"] | None = Field(
        default=None,
        description="Azure only: API Management tier (both stream and join a VNet); unset: Developer in dev, "
        "Premium in prod.",
    )
    apim_publisher_email: str = Field(
        default="platform-team@example.com",
        description="Azure only: API Management publisher e-mail (receives service notifications).",
    )
    apim_publisher_name: str = Field(
        default="tritonform", description="Azure only: API Management publisher (organisation) name."
    )
    log_retention_days: int = Field(
        default=30,
        ge=30,
        le=730,
        description="Azure only: days the Log Analytics workspace keeps AKS control-plane and blob "
        "data-access logs (30-730).",
    )

    _cidrs = field_validator("pod_cidr", "service_cidr")(_check_cidr)

    @field_validator("spot_max_price")
    @classmethod
    def _price(cls, value: float) -> float:
        if value != -1 and value <= 0:
            raise ValueError("must be -1 (up to the on-demand price) or a positive USD price per hour")
        return value

    @field_validator("apim_publisher_email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise ValueError("must be an e-mail address such as ops@example.com")
        return value

    @field_validator("resource_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[-\w.()]{1,89}[-\w()]$", value):
            raise ValueError("must be 1-90 letters, digits, '-', '_', '.', '(' or ')', not ending in '.'")
        return value

    @field_validator("admin_group_object_ids")
    @classmethod
    def _guids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _GUID.match(item):
                raise ValueError(f"{item!r} is not an Entra ID object id (a GUID)")
        return value


# CloudWatch Logs keeps log groups only for these numbers of days.
# fmt: off
CLOUDWATCH_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
)
# fmt: on


class AwsSettings(_Settings):
    """AWS-only settings: the edge's web application firewall and how long access logs are kept."""

    waf_window_seconds: Literal[60, 120, 300, 600] = Field(
        default=300,
        description="AWS only: window (seconds) over which the WAF counts each API key's requests.",
    )
    waf_requests_per_key: int | None = Field(
        default=None,
        ge=10,
        le=2_000_000_000,
        description="AWS only: requests one API key may send per WAF window before the edge answers 403; "
        "unset: `gateway.requestsPerMinute` for each minute of the window (holds across gateway replicas).",
    )
    waf_count_only_rules: tuple[str, ...] = Field(
        # Prompts are arbitrary text (code, HTML, shell, file paths): the rule set's body rules would refuse
        # a user asking about `<script>` or `../../etc/passwd`; they only count. Headers, URIs, query
        # strings and cookies stay blocked.
        default=(
            "SizeRestrictions_BODY",
            "CrossSiteScripting_BODY",
            "GenericLFI_BODY",
            "GenericRFI_BODY",
            "EC2MetaDataSSRF_BODY",
        ),
        description="AWS only: rules of the WAF's AWSManagedRulesCommonRuleSet that only count, never block: "
        "by default its body rules (an 8 KB limit; code, markup and paths are ordinary prompts).",
    )
    log_retention_days: int = Field(
        default=90, description="AWS only: days the API's access logs and the bucket's access logs are kept."
    )
    manage_api_gateway_account: bool = Field(
        default=True,
        description="AWS only: set API Gateway's CloudWatch role for the account and region (one per region, "
        "needed for access logs); false where another stack already sets it.",
    )

    @field_validator("waf_count_only_rules")
    @classmethod
    def _known_rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in AWS_COMMON_RULE_SET_RULES]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} not in AWSManagedRulesCommonRuleSet; use any of "
                f"{', '.join(sorted(AWS_COMMON_RULE_SET_RULES))}"
            )
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in CLOUDWATCH_RETENTION_DAYS:
            raise ValueError(
                f"CloudWatch keeps logs for one of {', '.join(map(str, CLOUDWATCH_RETENTION_DAYS))} days"
            )
        return value

    def requests_per_key(self, requests_per_minute: int) -> int:
        """The WAF's limit per key and window: the setting, else the gateway's limit for each minute."""
        if self.waf_requests_per_key is not None:
            return self.waf_requests_per_key
        return max(10, requests_per_minute * self.waf_window_seconds // 60)
