"""Shared fixtures: offline plans of the real program, computed once per stack file per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from infra.catalog import CloudName
from infra.offline import Plan, plan_stack
from infra.settings.new_stack import StackAnswers, example_stack_file, new_stack_config

ROOT = Path(__file__).resolve().parents[2]
STACKS = ROOT / "stacks"
STACK_FILES = sorted(STACKS.glob("Pulumi.*.yaml"))

_CACHE: dict[Path, Plan] = {}


def planned(path: Path) -> Plan:
    """The plan for a stack file (the program runs once per file per session; plans are read-only)."""
    path = path.resolve()
    if path not in _CACHE:
        _CACHE[path] = plan_stack(path)
    return _CACHE[path]


@pytest.fixture
def plan_of() -> Callable[[str], Plan]:
    """`plan_of("aws-dev")` plans stacks/Pulumi.aws-dev.yaml."""
    return lambda stack: planned(STACKS / f"Pulumi.{stack}.yaml")


@pytest.fixture
def write_stack(tmp_path: Path) -> Callable[[str], Path]:
    """Write a stack file's text to a temporary Pulumi.<name>.yaml and return its path."""

    def write(text: str, name: str = "test") -> Path:
        path = tmp_path / f"Pulumi.{name}.yaml"
        path.write_text(text)
        return path

    return write


# What a user would answer `tritonform init` (addresses outside the documentation ranges).
ADMIN_CIDR, CLIENT_CIDR = "198.18.7.9/32", "100.64.0.0/10"


def answers_for(cloud: CloudName, environment: str = "dev") -> StackAnswers:
    """`tritonform init` answers for an example stack: the deployer's and the clients' networks."""
    return StackAnswers(
        cloud=cloud,
        environment="prod" if environment == "prod" else "dev",
        name=f"tf-{environment}",
        api_access="public" if environment == "dev" else "private",
        admin_cidrs=(ADMIN_CIDR,),
        client_cidrs=(CLIENT_CIDR,),
        gcp_project="acme-ml-serving" if cloud == "gcp" else None,
    )


@pytest.fixture
def ready_stack(tmp_path: Path) -> Callable[[CloudName, str], Path]:
    """`ready_stack("gcp", "dev")`: the example stack with a user's values, as `tritonform init` writes it."""

    def write(cloud: CloudName, environment: str = "dev") -> Path:
        example = yaml.safe_load(example_stack_file(STACKS, cloud, environment).read_text())
        config = new_stack_config(example["config"], answers_for(cloud, environment))
        path = tmp_path / f"Pulumi.{cloud}-{environment}-ready.yaml"
        path.write_text(yaml.safe_dump({"config": config}, sort_keys=False))
        return path

    return write


# A version as `tritonform model upload` names it (and sets as tritonform:triton.modelVersion).
MODEL_VERSION = "20261201T101500Z-0123456789ab"


def with_model_version(stack: str, folder: Path, version: str = MODEL_VERSION) -> Path:
    """The example stack file with `triton.modelVersion` set, written to `folder`."""
    path = folder / f"Pulumi.{stack}.yaml"
    if not path.exists():
        document = yaml.safe_load((STACKS / f"Pulumi.{stack}.yaml").read_text())
        document["config"].setdefault("tritonform:triton", {})["modelVersion"] = version
        path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def serving_plan_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Plan]:
    """`serving_plan_of("aws-dev")`: the example stack with a model version, planned once per session."""
    folder = tmp_path_factory.mktemp("serving-stacks")
    return lambda stack: planned(with_model_version(stack, folder))
