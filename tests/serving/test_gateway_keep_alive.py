"""An idle client connection stays open `keep_alive_s` (serving/gateway/settings.py), longer than the
load balancer's own keep-alive to the gateway: otherwise the balancer reuses a connection the gateway
is closing, and the client gets a 502 for a request the gateway never saw."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from serving.gateway import GatewaySettings
from serving.gateway import __main__ as gateway_main
from tests.serving.conftest import gateway_settings
from tests.serving.fake_backend import FakeTriton

# GCP's external Application Load Balancer keeps its connections to a backend open 600 s (fixed);
# the gateway must keep them longer.
GCP_BACKEND_KEEP_ALIVE_S = 600


def _request(sock: socket.socket, host: str) -> bytes:
    """One GET /healthz on `sock`; the whole response (its head, then Content-Length bytes of body)."""
    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += _more(sock)
    head, body = answer.split(b"\r\n\r\n", 1)
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int({name.lower(): value for name, value in fields.items()}[b"content-length"])
    while len(body) < length:
        body += _more(sock)
    assert len(body) == length  # nothing of a later answer was read with it
    return head


def _more(sock: socket.socket) -> bytes:
    data = sock.recv(4096)
    assert data, "the gateway closed the connection in the middle of an answer"
    return data


def test_the_default_keep_alive_outlasts_the_load_balancers() -> None:
    assert GatewaySettings.model_fields["keep_alive_s"].default > GCP_BACKEND_KEEP_ALIVE_S


def test_an_idle_connection_is_closed_after_keep_alive_s_and_not_at_once(serve: Any) -> None:
    gateway = serve(FakeTriton(), keep_alive_s=3)
    url = urlsplit(gateway.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        assert _request(sock, url.netloc).startswith(b"HTTP/1.1 200")
        # The same connection serves a second request: it was kept open.
        assert _request(sock, url.netloc).startswith(b"HTTP/1.1 200")
        # Left idle, the gateway closes it (3 s here): the setting reaches uvicorn.
        assert sock.recv(4096) == b""


def test_the_containers_command_serves_with_the_settings_keep_alive(
    monkeypatch: pytest.MonkeyPatch, small_context: Path
) -> None:
    served: list[Any] = []
    monkeypatch.setattr(gateway_main.uvicorn.Server, "run", lambda server: served.append(server.config))
    settings = gateway_settings("127.0.0.1:1", small_context, tokenizer_dir=small_context, keep_alive_s=900)
    monkeypatch.setattr(GatewaySettings, "from_env", classmethod(lambda cls: settings))
    assert gateway_main.main(["--port", "9999"]) == 0
    (config,) = served
    assert (config.timeout_keep_alive, config.port, config.proxy_headers) == (900, 9999, True)
