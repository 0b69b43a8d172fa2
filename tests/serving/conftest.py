"""Gateway fixtures: the tiny model's repository, a real Triton, and gateways on loopback.

The tiny model, its export and its repository come from tests/conftest.py (built once per session).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from serving.gateway import GatewaySettings, create_app, server_config
from serving.triton_local import TritonServer, TritonServerConfig, free_port

API_KEY = "test-key-" + "x" * 24
MODEL = "llm"


@pytest.fixture(scope="session")
def triton(tiny_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(TritonServerConfig(tiny_repository, startup_timeout_s=120)) as server:
        yield server


@dataclass
class RunningGateway:
    """A gateway served by uvicorn in a thread of the test process."""

    url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def start_gateway(
    settings: GatewaySettings, timeout: float = 20, backend: Any = None, canary_backend: Any = None
) -> RunningGateway:
    """`create_app(settings, backend)` served by uvicorn in a thread, on a free loopback port."""
    port = free_port()
    app = create_app(settings, backend, canary_backend=canary_backend)
    server = uvicorn.Server(
        server_config(app, settings, "127.0.0.1", port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.05)
    return RunningGateway(f"http://127.0.0.1:{port}", app, server, thread)


def gateway_settings(triton_grpc_url: str, repository: Path, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "triton_grpc_url": triton_grpc_url,
        "model_name": MODEL,
        "model_repository": repository,
        "api_keys": (SecretStr(API_KEY),),
        "max_prompt_tokens": 200,
        "max_tokens_cap": 128,
        "default_max_tokens": 32,
        "max_body_bytes": 64 * 1024,
        "generation_timeout_s": 60,
        "log_prompts": False,
    }
    values.update(overrides)
    return GatewaySettings(**values)


@pytest.fixture(scope="session")
def small_context(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's tokenizer and metadata, with a context of 64 tokens."""
    from model_repo.manifest import engine_dir
    from model_repo.runtime.contract import METADATA_FILE, TOKENIZER_FILE

    source = engine_dir(tiny_repository, "llm")
    folder = tmp_path_factory.mktemp("small-context")
    (folder / TOKENIZER_FILE).write_bytes((source / TOKENIZER_FILE).read_bytes())
    meta = json.loads((source / METADATA_FILE).read_text())
    (folder / METADATA_FILE).write_text(json.dumps({**meta, "max_context": 64}))
    return folder


@pytest.fixture(scope="session")
def roomy_context(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's tokenizer and metadata with a 4096-token context (prompts with tools)."""
    from model_repo.manifest import engine_dir
    from model_repo.runtime.contract import METADATA_FILE, TOKENIZER_FILE

    source = engine_dir(tiny_repository, "llm")
    folder = tmp_path_factory.mktemp("roomy-context")
    (folder / TOKENIZER_FILE).write_bytes((source / TOKENIZER_FILE).read_bytes())
    meta = json.loads((source / METADATA_FILE).read_text())
    (folder / METADATA_FILE).write_text(json.dumps({**meta, "max_context": 4096}))
    return folder


@pytest.fixture
def serve(small_context: Path) -> Iterator[Any]:
    """`serve(backend, **settings)`: a gateway over a scripted backend (tests/serving/fake_backend.py)
    and the tiny tokenizer with a 64-token context; all stopped after the test."""
    running: list[RunningGateway] = []

    def start(backend: Any, **overrides: Any) -> RunningGateway:
        values = {"tokenizer_dir": small_context, **overrides}
        settings = gateway_settings("127.0.0.1:1", small_context, **values)
        gateway = start_gateway(settings, backend=backend)
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def make_gateway(tiny_repository: Path) -> Iterator[Callable[..., RunningGateway]]:
    """`make_gateway(triton_grpc_url, **settings)`: a gateway on a free port, stopped after the session."""
    started: list[RunningGateway] = []

    def make(triton_grpc_url: str, **overrides: Any) -> RunningGateway:
        running = start_gateway(gateway_settings(triton_grpc_url, tiny_repository, **overrides))
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def gateway(triton: TritonServer, make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway(triton.grpc_url)


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture(scope="session")
def engine(tiny_llama_export: Path) -> Any:
    """The same model in-process: the reference for greedy outputs."""
    from model_repo.runtime.engine import Engine

    return Engine.load(tiny_llama_export, num_threads=1)
