"""Azure registry (azure/registry.py): a private ACR the kubelet pulls from, pushed with a scoped token."""

from __future__ import annotations

import base64

from pulumi.dynamic.dynamic import serialize_provider

from infra.offline import Plan
from infra.offline.mocks.azure import ACR_TOKEN_PASSWORD, KUBELET_OBJECT_ID
from infra.platform.azure.registry import ACR_PULL, _TokenPasswordProvider, push_actions
from tests.infra.platform.provisioned import provisioned


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


def test_the_push_password_provider_keeps_the_import_path_stack_state_records() -> None:
    # Pulumi stores a dynamic provider by import path and imports it from there to refresh, replace or
    # delete the password: a move of the class breaks deployed stacks, so it is a decision, not a tidy-up.
    serialized = base64.b64decode(serialize_provider(_TokenPasswordProvider()))
    assert b"infra.platform.azure.registry" in serialized and b"_TokenPasswordProvider" in serialized
