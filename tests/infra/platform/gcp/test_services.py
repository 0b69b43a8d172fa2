"""GCP services (gcp/services.py): every API the stack calls is enabled first, and stays on at destroy."""

from __future__ import annotations

import pytest

from infra.offline import Plan
from infra.platform.gcp.services import SERVICES
from tests.infra.platform.dependencies import registrations

SERVICE = "gcp:projects/service:Service"


def test_the_apis_the_stack_uses_are_enabled_and_left_on_at_destroy(dev: Plan) -> None:
    services = {r.inputs["service"]: r.inputs for r in dev.of_type(SERVICE)}
    assert set(services) == set(SERVICES)
    assert {
        "container.googleapis.com",
        "compute.googleapis.com",
        "artifactregistry.googleapis.com",
        "certificatemanager.googleapis.com",
        "iam.googleapis.com",
        "iamcredentials.googleapis.com",
        "sts.googleapis.com",
        "cloudresourcemanager.googleapis.com",
        "serviceusage.googleapis.com",
        "storage.googleapis.com",
        "logging.googleapis.com",
        "monitoring.googleapis.com",
    } <= set(services)
    for inputs in services.values():
        assert inputs["disableOnDestroy"] is False and inputs["project"] == "your-project-id"


def test_the_api_of_every_resource_type_the_stack_creates_is_enabled(dev: Plan) -> None:
    # A GCP type token names its API: gcp:<module>/<type>:<Type>; storage IAM and project IAM live on
    # storage and cloudresourcemanager, service accounts on iam.
    api = {
        "compute": "compute",
        "container": "container",
        "artifactregistry": "artifactregistry",
        "certificatemanager": "certificatemanager",
        "serviceaccount": "iam",
        "storage": "storage",
        "projects": "cloudresourcemanager",
        "kms": None,  # the CMEK key lives in the user's KMS project, where Cloud KMS is on already
    }
    enabled = {s.split(".")[0] for s in SERVICES}
    for resource in dev.resources:
        if resource.type.startswith("gcp:") and resource.type != SERVICE:
            module = resource.type.split(":")[1].split("/")[0]
            assert module in api, resource.type
            assert api[module] is None or api[module] in enabled, resource.type


@pytest.mark.parametrize("stack", ["gcp-dev", "gcp-prod"])
def test_every_gcp_resource_waits_for_the_enabled_apis(stack: str) -> None:
    recorded = registrations(stack)
    services = recorded.plan.of_type(SERVICE)
    assert len(services) == len(SERVICES)
    waiting = [r for r in recorded.plan.resources if r.type.startswith("gcp:") and r.type != SERVICE]
    assert len(waiting) > 20
    for resource in waiting:
        assert all(recorded.waits_for(resource, s) for s in services), f"{resource.type}::{resource.name}"
