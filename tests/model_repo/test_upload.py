"""Upload to real object-store emulators on loopback (moto S3, gcp-storage-emulator, azurite), and a
real Triton loading the uploaded version straight from the S3 emulator."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_repo.layout import write_repository
from model_repo.object_stores import open_store
from model_repo.spec import GenerationSpec
from model_repo.storage import FileDigests, ObjectStore, StorageUri, StoredBytes, read_pointer
from model_repo.upload import UploadError, upload_repository
from serving.triton_local import free_port

pytestmark = pytest.mark.timeout(180)

# Azurite's documented, public development account (not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _serve(command: list[str], port: int, timeout: float = 30) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command[0]} did not listen on {port} within {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed (see the test set-up notes: pip/npm install it)")
    return found


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    process = _serve([_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)], port)
    saved = {k: os.environ.get(k) for k in DUMMY_AWS}
    os.environ.update(DUMMY_AWS)
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="models")
    yield f"127.0.0.1:{port}"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _stop(process)


@pytest.fixture()
def small_repo(tmp_path: Path) -> Path:
    art = tmp_path / "art"
    art.mkdir()
    for name, data in {
        "model.onnx": b"graph",
        "model.onnx.data": b"w" * 4096,
        "tokenizer.json": b"{}",
    }.items():
        (art / name).write_bytes(data)
    (art / "generation.json").write_text("{}")
    return write_repository(tmp_path / "repo", art, GenerationSpec())


def test_s3_versions_pointer_and_idempotence(s3_endpoint: str, small_repo: Path, tmp_path: Path) -> None:
    destination = f"s3://{s3_endpoint}/models/smol"
    first = upload_repository(small_repo, destination)
    assert first.repository_uri == f"s3://{s3_endpoint}/models/smol/versions/{first.version}"
    store = open_store(StorageUri.parse(destination))
    pointer = read_pointer(store, StorageUri.parse(destination))
    assert pointer is not None and pointer["version"] == first.version and pointer["previous"] is None
    assert upload_repository(small_repo, destination).already_current

    (small_repo / "llm" / "1" / "engine" / "tokenizer.json").write_bytes(b'{"v": 2}')
    rebuilt = write_repository(tmp_path / "repo2", small_repo / "llm" / "1" / "engine", GenerationSpec())
    second = upload_repository(rebuilt, destination)
    assert second.version != first.version
    pointer = read_pointer(store, StorageUri.parse(destination))
    assert (
        pointer is not None and pointer["version"] == second.version and pointer["previous"] == first.version
    )
    # the old version stays whole for rollback
    keys = store.list_sizes(f"smol/versions/{first.version}/")
    assert f"smol/versions/{first.version}/llm/config.pbtxt" in keys


class WrappedStore:
    """A real store behind every `ObjectStore` method, for wrappers that change one of them."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.checksum = inner.checksum

    def upload_file(self, local: Path, key: str, digests: FileDigests) -> None:
        self.inner.upload_file(local, key, digests)

    def stored_checksum(self, key: str) -> str | None:
        return self.inner.stored_checksum(key)

    def get_bytes(self, key: str) -> bytes | None:
        return self.inner.get_bytes(key)

    def read(self, key: str) -> StoredBytes | None:
        return self.inner.read(key)

    def put_bytes(self, key: str, data: bytes, *, replacing: str | None) -> None:
        self.inner.put_bytes(key, data, replacing=replacing)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return self.inner.list_sizes(prefix)


class _FailingStore(WrappedStore):
    """Wraps a real store; fails after `uploads` files, or lies about what is listed."""

    def __init__(self, inner: ObjectStore, uploads: int = 10**9, lie: bool = False) -> None:
        super().__init__(inner)
        self.uploads, self.lie = uploads, lie

    def upload_file(self, local: Path, key: str, digests: FileDigests) -> None:
        if self.uploads == 0:
            raise ConnectionError("network gone")
        self.uploads -= 1
        self.inner.upload_file(local, key, digests)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        sizes = self.inner.list_sizes(prefix)
        return {k: v + 1 for k, v in sizes.items()} if self.lie else sizes


def test_failed_upload_keeps_current_version(s3_endpoint: str, small_repo: Path, tmp_path: Path) -> None:
    destination = f"s3://{s3_endpoint}/models/failing"
    location = StorageUri.parse(destination)
    good = upload_repository(small_repo, destination)
    (small_repo / "llm" / "1" / "engine" / "model.onnx").write_bytes(b"new graph")
    changed = write_repository(tmp_path / "changed", small_repo / "llm" / "1" / "engine", GenerationSpec())
    store = open_store(location)
    with pytest.raises(ConnectionError):
        upload_repository(changed, destination, store=_FailingStore(store, uploads=2))
    with pytest.raises(UploadError, match=r"verification .* failed"):
        upload_repository(changed, destination, store=_FailingStore(store, lie=True))
    pointer = read_pointer(store, location)
    assert pointer is not None and pointer["version"] == good.version


def test_triton_loads_the_uploaded_version_from_s3(s3_endpoint: str, tiny_repository: Path) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    from serving.triton_local import TritonServer, TritonServerConfig

    result = upload_repository(tiny_repository, f"s3://{s3_endpoint}/models/tiny")
    config = TritonServerConfig(result.repository_uri, extra_env=DUMMY_AWS, startup_timeout_s=90)
    with TritonServer(config) as server:
        assert [m["state"] for m in server.model_states()] == ["READY"]
        client = grpcclient.InferenceServerClient(server.grpc_url)
        answers: list[Any] = []
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        inputs = []
        for name, value, kind in (
            ("text_input", np.array([[b"hello"]], dtype=np.object_), "BYTES"),
            ("max_tokens", np.array([[4]], dtype=np.int32), "INT32"),
        ):
            tensor = grpcclient.InferInput(name, list(value.shape), kind)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        client.async_stream_infer("llm", inputs)
        deadline = time.monotonic() + 30
        while not answers and time.monotonic() < deadline:
            time.sleep(0.05)
        client.stop_stream()
        client.close()
    result_, error = answers[0]
    assert error is None and int(result_.as_numpy("completion_tokens")[0][0]) >= 1


@pytest.fixture(scope="module")
def gcs_endpoint() -> Iterator[str]:
    port = free_port()
    command = [_tool("gcp-storage-emulator"), "start", "--host=127.0.0.1", f"--port={port}", "--in-memory",
               "--default-bucket=models"]  # fmt: skip
    process = _serve(command, port)
    yield f"http://127.0.0.1:{port}"
    _stop(process)


def test_gcs_emulator_upload(gcs_endpoint: str, small_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    result = upload_repository(small_repo, "gs://models/smol")
    location = StorageUri.parse("gs://models/smol")
    pointer = read_pointer(open_store(location), location)
    assert pointer is not None and pointer["repository"] == f"gs://models/smol/versions/{result.version}"
    assert upload_repository(small_repo, "gs://models/smol").already_current


def test_triton_loads_the_uploaded_version_from_gcs(
    gcs_endpoint: str, tiny_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.triton_local import TritonServer, TritonServerConfig

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    result = upload_repository(tiny_repository, "gs://models/tiny")
    # without CLOUD_STORAGE_EMULATOR_ENDPOINT Triton would hang on the real GCS: bounded by the timeouts
    env = {"CLOUD_STORAGE_EMULATOR_ENDPOINT": gcs_endpoint}
    with TritonServer(
        TritonServerConfig(result.repository_uri, extra_env=env, startup_timeout_s=60)
    ) as server:
        assert [m["state"] for m in server.model_states()] == ["READY"]


@pytest.fixture(scope="module")
def azurite_connection() -> Iterator[str]:
    """A connection string to azurite on loopback, with an empty container `models`."""
    port = free_port()
    command = [_tool("azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", str(port),
               "--inMemoryPersistence", "--silent", "--skipApiVersionCheck",
               "--disableTelemetry"]  # fmt: skip
    process = _serve(command, port)
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(connection).create_container("models")
    yield connection
    _stop(process)


def test_azurite_upload(azurite_connection: str, small_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection)
    destination = f"as://{AZURITE_ACCOUNT}/models/smol"
    result = upload_repository(small_repo, destination)
    location = StorageUri.parse(destination)
    pointer = read_pointer(open_store(location), location)
    assert pointer is not None and pointer["version"] == result.version
    assert pointer["repository"] == f"as://{AZURITE_ACCOUNT}/models/smol/versions/{result.version}"
