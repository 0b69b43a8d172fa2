"""What an upload proves before it flips CURRENT: the checksum each cloud computed of what it stored equals
the built file's, on the emulators the upload tests run (moto S3, gcp-storage-emulator, azurite)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from model_repo.layout import write_repository
from model_repo.manifest import MANIFEST_FILE
from model_repo.object_stores import AzureStore, S3Store, open_store
from model_repo.spec import GenerationSpec
from model_repo.storage import FileDigests, ObjectStore, StorageError, StorageUri, digest_file, read_pointer
from model_repo.upload import UploadError, upload_repository
from tests.model_repo.test_upload import (  # noqa: F401 - fixtures
    AZURITE_ACCOUNT,
    WrappedStore,
    azurite_connection,
    gcs_endpoint,
    s3_endpoint,
    small_repo,
)

pytestmark = pytest.mark.timeout(180)

WEIGHTS = "llm/1/engine/model.onnx.data"


@pytest.fixture(params=["s3", "gs", "as"])
def destination(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix on one of the three emulators."""
    name = f"integrity-{uuid.uuid4().hex[:8]}"
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_endpoint')}/models/{name}"
    if request.param == "gs":
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", request.getfixturevalue("gcs_endpoint"))
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
        return f"gs://models/{name}"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", request.getfixturevalue("azurite_connection"))
    return f"as://{AZURITE_ACCOUNT}/models/{name}"


def _flipped_copy(local: Path, folder: Path) -> Path:
    """A copy of `local` with the same size and one byte changed."""
    data = bytearray(local.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy = folder / f"flipped-{local.name}"
    copy.write_bytes(bytes(data))
    return copy


class _SwappedBytes(WrappedStore):
    """Sends other bytes of the same size than the checked file for `WEIGHTS` (a file that changed after
    it was checked, or a transfer that went wrong), with the checked file's digests."""

    def __init__(self, inner: ObjectStore, folder: Path) -> None:
        super().__init__(inner)
        self.folder = folder

    def upload_file(self, local: Path, key: str, digests: FileDigests) -> None:
        swapped = _flipped_copy(local, self.folder) if key.endswith(WEIGHTS) else local
        self.inner.upload_file(swapped, key, digests)


class _ReplacedAfterUpload(WrappedStore):
    """Another writer replaces `WEIGHTS` right after its upload: same size, other bytes, and the checked
    file's sha256 as metadata (which nothing trusts)."""

    def __init__(self, inner: ObjectStore, folder: Path) -> None:
        super().__init__(inner)
        self.folder = folder

    def upload_file(self, local: Path, key: str, digests: FileDigests) -> None:
        self.inner.upload_file(local, key, digests)
        if key.endswith(WEIGHTS):
            _write_directly(self.inner, key, _flipped_copy(local, self.folder).read_bytes(), digests.sha256)


def _write_directly(store: ObjectStore, key: str, data: bytes, sha256: str) -> None:
    """A write through the cloud's SDK, not through the store."""
    if isinstance(store, S3Store):
        store.client.put_object(
            Bucket=store.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256", Metadata={"sha256": sha256}
        )
    elif isinstance(store, AzureStore):
        store.container.upload_blob(key, data, overwrite=True, metadata={"sha256": sha256})
    else:
        blob = store.bucket.blob(key)  # type: ignore[attr-defined]
        blob.metadata = {"sha256": sha256}
        blob.upload_from_string(data)


def _changed_repository(repository: Path, tmp_path: Path) -> Path:
    art = tmp_path / "changed-art"
    shutil.copytree(repository / "llm" / "1" / "engine", art)
    (art / "model.onnx").write_bytes(b"another graph")
    return write_repository(tmp_path / "changed", art, GenerationSpec())


@pytest.mark.parametrize("wrapper", [_SwappedBytes, _ReplacedAfterUpload], ids=["sent", "replaced"])
def test_content_that_differs_with_the_same_size_is_caught(
    destination: str,
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
    wrapper: type[WrappedStore],
) -> None:
    location = StorageUri.parse(destination)
    store = open_store(location)
    good = upload_repository(small_repo, destination)
    changed = _changed_repository(small_repo, tmp_path)
    with pytest.raises(StorageError, match="differ") as caught:
        upload_repository(changed, destination, store=wrapper(store, tmp_path))  # type: ignore[call-arg]
    if wrapper is _ReplacedAfterUpload:  # the cloud's own checksum, after the upload
        assert isinstance(caught.value, UploadError) and "verification of" in str(caught.value)
    pointer = read_pointer(store, location)
    assert pointer is not None and pointer["version"] == good.version
    # the refused version never got its manifest, so nothing can take it for complete
    listed = store.list_sizes(location.key("versions") + "/")
    assert [key for key in listed if key.endswith(MANIFEST_FILE)] == [
        location.key("versions", good.version, MANIFEST_FILE)
    ]


def test_a_file_changed_since_the_build_is_refused_before_uploading(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
) -> None:
    weights = small_repo / WEIGHTS
    weights.write_bytes(_flipped_copy(weights, small_repo).read_bytes())  # same size, other content
    with pytest.raises(UploadError, match="changed since the build"):
        upload_repository(small_repo, f"s3://{s3_endpoint}/models/changed")


def _repository_with_weights(tmp_path: Path, size: int) -> Path:
    art = tmp_path / "big-art"
    art.mkdir()
    (art / "model.onnx").write_bytes(b"graph")
    (art / "model.onnx.data").write_bytes(os.urandom(size))
    (art / "tokenizer.json").write_text("{}")
    (art / "generation.json").write_text("{}")
    return write_repository(tmp_path / "big", art, GenerationSpec())


def test_s3_files_stored_in_parts_are_verified_by_their_composite_sha256(
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}")
    store = S3Store(client, "models", part_size=5 << 20)
    repository = _repository_with_weights(tmp_path, (11 << 20) + 123)  # three parts
    destination = f"s3://{s3_endpoint}/models/parts"
    result = upload_repository(repository, destination, store=store)
    key = StorageUri.parse(destination).key("versions", result.version, WEIGHTS)
    expected = digest_file(repository / WEIGHTS, store.checksum).cloud_checksum
    assert expected.endswith("-3")
    assert expected.startswith(str(store.stored_checksum(key)).split("-")[0])

    with pytest.raises(UploadError, match=r"verification of .* differs"):
        upload_repository(
            _changed_repository(repository, tmp_path), destination, store=_SwappedBytes(store, tmp_path)
        )
    assert read_pointer(store, StorageUri.parse(destination))["version"] == result.version  # type: ignore[index]


def test_azure_blobs_above_one_put_are_checked_as_they_are_sent(
    azurite_connection: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection)
    destination = f"as://{AZURITE_ACCOUNT}/models/blocks"
    location = StorageUri.parse(destination)
    store = AzureStore.connect(location, single_put_size=1 << 20)
    repository = _repository_with_weights(tmp_path, (3 << 20) + 5)  # staged as blocks
    result = upload_repository(repository, destination, store=store)
    key = location.key("versions", result.version, WEIGHTS)
    assert store.stored_checksum(key) == digest_file(repository / WEIGHTS, store.checksum).cloud_checksum

    with pytest.raises(StorageError, match="the bytes sent differ from the checked file"):
        upload_repository(
            _changed_repository(repository, tmp_path), destination, store=_SwappedBytes(store, tmp_path)
        )
    assert read_pointer(store, location)["version"] == result.version  # type: ignore[index]
