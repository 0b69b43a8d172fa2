"""The Triton release a stack runs must read the model bucket with its cloud's workload identity."""

from __future__ import annotations

from typing import Any

import pytest

from infra.catalog import DEFAULT_TRITON_RELEASE, TRITON_WORKLOAD_IDENTITY_RELEASES
from infra.settings import SettingsError, load_settings, load_stack_file
from tests.infra.conftest import STACKS


def _config(stack: str, **changes: Any) -> dict[str, Any]:
    settings = load_stack_file(STACKS / f"Pulumi.{stack}.yaml")
    config = settings.model_dump(by_alias=True, exclude_none=True)
    config.update(changes)
    return config


def test_the_default_release_authenticates_on_every_cloud() -> None:
    for stack in ("aws-dev", "gcp-dev", "azure-dev"):
        assert load_stack_file(STACKS / f"Pulumi.{stack}.yaml").triton.version == DEFAULT_TRITON_RELEASE
    for first in TRITON_WORKLOAD_IDENTITY_RELEASES.values():
        assert tuple(map(int, DEFAULT_TRITON_RELEASE.split("."))) >= tuple(map(int, first.split(".")))


def test_azure_refuses_a_release_without_workload_identity_for_blob_storage() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(_config("azure-dev", triton={"version": "25.02"}))
    message = str(refused.value)
    assert "tritonform:triton.version: Triton 25.02 cannot read the model bucket on azure" in message
    assert 'set triton.version to "26.05" or later' in message and "(got '25.02')" in message


@pytest.mark.parametrize("release", ["26.05", "26.07", "27.01"])
def test_azure_accepts_releases_from_the_first_that_can(release: str) -> None:
    assert load_settings(_config("azure-dev", triton={"version": release})).triton.version == release


@pytest.mark.parametrize("stack", ["aws-dev", "gcp-dev"])
def test_other_clouds_keep_older_releases(stack: str) -> None:
    assert load_settings(_config(stack, triton={"version": "25.02"})).triton.version == "25.02"


def test_the_triton_dockerfile_builds_on_the_default_release() -> None:
    dockerfile = (STACKS.parent / "docker" / "triton" / "Dockerfile").read_text()
    assert f"ARG TRITON_VERSION={DEFAULT_TRITON_RELEASE}\n" in dockerfile
