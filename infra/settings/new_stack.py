"""A new stack file from an example in `stacks/` and the user's own values (`tritonform init`).

The examples hold documentation values (address ranges, project and object ids) that
`infra.settings.readiness` refuses; `new_stack_config` replaces every one of them with the user's answer
or drops the key, and `write_stack_file` checks the result with the same settings layer and readiness
check as `plan` before anything is written.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml

from infra.catalog import CloudName
from infra.settings.readiness import Readiness, check_readiness
from infra.settings.stack import NAMESPACE, SettingsError, StackSettings, load_settings


@dataclass(frozen=True)
class StackAnswers:
    """What only the user knows. None keeps the example's value (region, zone) or drops it (keys)."""

    cloud: CloudName
    environment: Literal["dev", "prod"]
    name: str
    api_access: Literal["public", "private"]
    admin_cidrs: tuple[str, ...] = ()  # who may reach a public Kubernetes API: the deployer's machine
    client_cidrs: tuple[str, ...] = ()  # who may call the endpoint
    region: str | None = None
    gcp_project: str | None = None
    gcp_zone: str | None = None
    azure_admin_groups: tuple[str, ...] = ()
    apim_publisher_email: str | None = None
    kms_key: str | None = None


def example_stack_file(stacks_dir: Path, cloud: CloudName, environment: str) -> Path:
    """The example a new stack starts from: `stacks/Pulumi.<cloud>-<environment>.yaml`."""
    return stacks_dir / f"Pulumi.{cloud}-{environment}.yaml"


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


def _block(config: dict[str, Any], name: str) -> dict[str, Any]:
    block = config.setdefault(_key(name), {})
    assert isinstance(block, dict), f"{_key(name)} is not a mapping in the example"
    return block


def new_stack_config(example: dict[str, Any], answers: StackAnswers) -> dict[str, Any]:
    """The example's `config:` mapping with every example value replaced by the answers."""
    config = copy.deepcopy(example)
    config[_key("cloud")] = answers.cloud
    config[_key("environment")] = answers.environment
    config[_key("name")] = answers.name
    config.pop(_key("tags"), None)  # the examples' team and cost centre are not the user's
    if answers.region is not None:
        config[_key("region")] = answers.region
    cluster = _block(config, "cluster")
    cluster["endpointPublicAccess"] = answers.api_access == "public"
    if answers.api_access == "public":
        cluster["endpointAllowedCidrs"] = list(answers.admin_cidrs)
    else:
        cluster.pop("endpointAllowedCidrs", None)
    config[_key("allowedClientCidrs")] = list(answers.client_cidrs)
    bucket = _block(config, "bucket")
    if answers.kms_key is not None:
        bucket["kmsKey"] = answers.kms_key
    else:
        bucket.pop("kmsKey", None)
    if answers.cloud == "gcp":
        gcp = _block(config, "gcp")
        if answers.gcp_project is not None:
            gcp["project"] = answers.gcp_project
        if answers.gcp_zone is not None:
            gcp["zone"] = answers.gcp_zone
    if answers.cloud == "azure":
        azure = _block(config, "azure")
        azure["resourceGroup"] = f"{answers.name}-rg"
        if answers.azure_admin_groups:
            azure["adminGroupObjectIds"] = list(answers.azure_admin_groups)
        else:
            azure.pop("adminGroupObjectIds", None)
        if answers.apim_publisher_email is not None:
            azure["apimPublisherEmail"] = answers.apim_publisher_email
    return config


def _unnamespaced(config: dict[str, Any]) -> dict[str, Any]:
    return {key.partition(":")[2]: value for key, value in config.items() if key.startswith(f"{NAMESPACE}:")}


@dataclass(frozen=True)
class NewStack:
    """What `write_stack_file` wrote and what the settings layer says of it."""

    path: Path
    settings: StackSettings
    readiness: Readiness


def write_stack_file(
    target: Path, example_path: Path, answers: StackAnswers, today: date, *, overwrite: bool = False
) -> NewStack:
    """Write `target` from the example and the answers, after checking it; nothing is written when the
    result has a bad setting (`SettingsError`) or is not ready (`SettingsError` listing the blockers)."""
    if target.exists() and not overwrite:
        raise SettingsError(
            [f"{target} exists already; choose another stack name or pass --force"], str(target)
        )
    document = yaml.safe_load(example_path.read_text(encoding="utf-8"))
    config = new_stack_config(document["config"], answers)
    settings = load_settings(_unnamespaced(config), str(target))
    readiness = check_readiness(settings, today)
    if readiness.blockers:
        raise SettingsError(list(readiness.blockers), str(target))
    header = (
        f"# Written by `tritonform init` on {today} from {example_path.name}, with your values.\n"
        "# Every key is documented in README.md (settings table); `tritonform plan --stack "
        f"{target.name.removeprefix('Pulumi.').removesuffix('.yaml')}` checks it offline.\n"
    )
    body = yaml.safe_dump({"config": config}, sort_keys=False, default_flow_style=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(header + body, encoding="utf-8")
    partial.replace(target)
    return NewStack(target, settings, readiness)
