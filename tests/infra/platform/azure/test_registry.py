"""Azure registry (azure/registry.py): a private ACR the kubelet pulls from, pushed to with the deployer's own
Entra ID login exchanged for a short-lived ACR refresh token: no dynamic provider, no stored credential."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pulumi
import pytest
from pulumi.runtime.sync_await import _sync_await

from infra.offline import Plan
from infra.offline.mocks.azure import DEPLOYER_OBJECT_ID, KUBELET_OBJECT_ID
from infra.platform.azure import registry as azure_registry
from infra.platform.azure.registry import (
    ACR_PULL,
    ACR_PUSH,
    REFRESH_TOKEN_USER,
    exchange_for_refresh_token,
    push_password,
)
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


def test_the_deployer_pushes_with_its_own_login_and_no_registry_credential_exists(dev: Plan) -> None:
    acr = dev.one("azure-native:containerregistry:Registry").inputs
    push = dev.one("azure-native:authorization:RoleAssignment", "tf-dev-registry-push").inputs
    assert push["roleDefinitionId"].endswith(f"/roleDefinitions/{ACR_PUSH}")
    assert push["principalId"] == DEPLOYER_OBJECT_ID and push["principalType"] == "User"
    assert push["scope"].endswith(f"/registries/{acr['registryName']}")
    types = {r.type for r in dev.resources}
    assert not any(t.startswith("pulumi-python:dynamic") for t in types)  # pulumi/pulumi#7061
    assert not {"azure-native:containerregistry:Token", "azure-native:containerregistry:ScopeMap"} & types
    p = provisioned("azure-dev")
    registry = p.platform.registry
    assert p.value(registry.username) == REFRESH_TOKEN_USER
    assert p.value(registry.address).endswith(".azurecr.io")
    assert (
        p.value(registry.repositories["tritonform-triton"])
        == f"{p.value(registry.address)}/tritonform-triton"
    )


def test_offline_the_password_stays_unknown_and_secret() -> None:
    # Were the exchange attempted, the plan would call a registry that does not exist and fail.
    password = provisioned("azure-dev").platform.registry.password
    assert _sync_await(password.future()) is None
    assert _sync_await(password.is_known()) is False and _sync_await(password.is_secret()) is True


def test_while_applying_the_password_is_the_exchanged_refresh_token(monkeypatch: pytest.MonkeyPatch) -> None:
    provisioned("azure-dev")  # Pulumi's runtime settings, as a program has them
    calls: list[tuple[str, ...]] = []

    def exchange(*args: str) -> str:
        calls.append(args)
        return "acr-refresh-token"

    monkeypatch.setattr(azure_registry, "exchange_for_refresh_token", exchange)
    monkeypatch.setattr(pulumi.runtime.settings, "get_monitor", lambda: object())  # a real engine's
    password = push_password("tfdev.azurecr.io", "tenant-1", "arm-token")
    assert _sync_await(password.future()) == "acr-refresh-token"
    assert _sync_await(password.is_secret()) is True
    assert calls == [
        ("https://tfdev.azurecr.io/oauth2/exchange", "tfdev.azurecr.io", "tenant-1", "arm-token")
    ]


class _Exchange(BaseHTTPRequestHandler):
    """ACR's /oauth2/exchange on loopback: checks the form, answers a refresh token."""

    received: list[dict[str, list[str]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        _Exchange.received.append(form)
        body = json.dumps({"refresh_token": "acr-refresh-token"} if self.path == "/oauth2/exchange" else {})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def exchange_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Exchange)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_exchange_posts_the_entra_token_and_returns_the_refresh_token(exchange_server: str) -> None:
    _Exchange.received.clear()
    token = exchange_for_refresh_token(
        f"{exchange_server}/oauth2/exchange", "tfdev.azurecr.io", "tenant-1", "arm-token"
    )
    assert token == "acr-refresh-token"
    assert _Exchange.received == [
        {
            "grant_type": ["access_token"],
            "service": ["tfdev.azurecr.io"],
            "tenant": ["tenant-1"],
            "access_token": ["arm-token"],
        }
    ]


def test_an_answer_without_a_refresh_token_is_an_error_that_names_the_role(exchange_server: str) -> None:
    with pytest.raises(RuntimeError, match="AcrPush"):
        exchange_for_refresh_token(f"{exchange_server}/elsewhere", "r.azurecr.io", "t", "a")
