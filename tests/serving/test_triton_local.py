"""The local Triton launcher against the real server binary from nvidia-pytriton."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from serving.triton_local import TritonServer, TritonServerConfig, TritonStartError
from tests.procs import GROUP, live_processes

ECHO_CONFIG = """name: "echo"
backend: "python"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
ECHO_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)]
            )
            for r in requests
        ]
"""


def _repository(root: Path, config: str = ECHO_CONFIG) -> Path:
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "config.pbtxt").write_text(config)
    (root / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    return root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie that was reaped is gone; one not yet reaped counts as dead too
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


@pytest.mark.timeout(90)
def test_serves_and_cleans_up(tmp_path: Path) -> None:
    server = TritonServer(TritonServerConfig(_repository(tmp_path / "repo")))
    with server:
        assert server.model_states() == [{"name": "echo", "version": "1", "state": "READY"}]
        client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
        try:
            x = httpclient.InferInput("x", [3], "FP32")
            x.set_data_from_numpy(np.arange(3, dtype=np.float32))
            assert client.infer("echo", [x]).as_numpy("y").tolist() == [0.0, 2.0, 4.0]
        finally:
            client.close()
        pid, scratch = server.pid, server._scratch
        assert pid is not None and scratch is not None and scratch.is_dir()
        assert len(live_processes(GROUP, pid)) >= 2  # the server and the model's python stub
    assert not scratch.exists()
    assert not _alive(pid)
    assert live_processes(GROUP, pid) == []
    server.stop()  # idempotent


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TritonStartError, match="does not exist"):
        TritonServer(TritonServerConfig(tmp_path / "nope")).start()


def test_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        config = TritonServerConfig(_repository(tmp_path / "repo"), grpc_port=port)
        with pytest.raises(TritonStartError, match=f"grpc port {port} .* already in use"):
            TritonServer(config).start()


@pytest.mark.timeout(90)
def test_load_errors_are_surfaced(tmp_path: Path) -> None:
    bad = ECHO_CONFIG.replace("TYPE_FP32 dims: [ -1 ] } ]\noutput", "TYPE_FLOAT dims: [ -1 ] } ]\noutput")
    assert bad != ECHO_CONFIG
    server = TritonServer(TritonServerConfig(_repository(tmp_path / "repo", bad), startup_timeout_s=60))
    with pytest.raises(TritonStartError) as caught:
        server.start()
    message = str(caught.value)
    assert "Poll failed for model directory 'echo'" in message
    assert "Load errors" in message
    assert server.pid is None and server._scratch is None  # stopped and scratch removed
