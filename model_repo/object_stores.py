"""The object stores behind `model_repo.storage.ObjectStore`: S3, Google Cloud Storage and Azure Blob.

Each reports the checksum its cloud computed itself from the bytes it stored (`stored_checksum`, in the
form of its `ContentChecksum`), and replaces an object only if it is still the revision that was read
(`put_bytes(replacing=...)`):

    S3     ChecksumSHA256 (ChecksumMode=ENABLED): the object's SHA-256 when stored in one PUT, the SHA-256
           of its parts' SHA-256s (+ "-<parts>") when stored in parts; writes with If-Match / If-None-Match
    GCS    md5Hash, computed by GCS for every object written by one upload; writes with
           if_generation_match (0: only if absent)
    Azure  Content-MD5, computed by Azure for a blob written by one Put Blob (up to `single_put_size`);
           above it, the MD5 this store read from the bytes it sent (Azure checked each block's MD5);
           writes with the ETag and IfNotModified, or IfMissing

Every uploaded object also carries its sha256 as metadata (`sha256`), for people and tools; nothing
trusts it, since the cloud never checks metadata. The SDKs are imported only by the store that needs one.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_repo.storage import (
    AZURE_SINGLE_PUT_SIZE,
    METADATA_SHA256,
    S3_PART_SIZE,
    ConcurrentWriteError,
    ContentChecksum,
    FileDigests,
    ObjectStore,
    StorageError,
    StorageUri,
    StoredBytes,
)


class S3Store:
    """An S3 bucket (or an S3-compatible emulator at the URI's host:port) through boto3.

    Uploads carry SHA-256 checksums, which S3 checks against the bytes it received and keeps; files of at
    least `part_size` go in parts of that size, so S3 keeps a composite of the parts' SHA-256s."""

    def __init__(self, client: Any, bucket: str, part_size: int = S3_PART_SIZE) -> None:
        self.client, self.bucket, self.part_size = client, bucket, part_size
        self.checksum = ContentChecksum("sha256", part_size)

    @classmethod
    def connect(cls, location: StorageUri) -> S3Store:
        """The bucket of `location`, with credentials from boto3's usual chain."""
        import boto3

        return cls(boto3.client("s3", endpoint_url=location.endpoint), location.bucket)

    def upload_file(self, local: Path, key: str, digests: FileDigests) -> None:
        from boto3.s3.transfer import TransferConfig

        # The classic transfer manager with fixed parts: the composite checksum depends on the part size.
        config = TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.checksum.part_size_for(digests.size) or self.part_size,
            preferred_transfer_client="classic",
        )
        extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {METADATA_SHA256: digests.sha256}}
        self.client.upload_file(str(local), self.bucket, key, ExtraArgs=extra, Config=config)

    def stored_checksum(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise
        value = head.get("ChecksumSHA256")
        return str(value) if value else None

    def get_bytes(self, key: str) -> bytes | None:
        stored = self.read(key)
        return stored.data if stored else None

    def read(self, key: str) -> StoredBytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return StoredBytes(bytes(response["Body"].read()), str(response["ETag"]))

    def put_bytes(self, key: str, data: bytes, *, replacing: str | None) -> None:
        from botocore.exceptions import ClientError

        condition = {"IfMatch": replacing} if replacing is not None else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **condition)
        except ClientError as exc:
            # 412: the condition failed; 409: a concurrent conditional write; NoSuchKey: deleted meanwhile
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"):
                raise ConcurrentWriteError(f"s3://{self.bucket}/{key} changed meanwhile ({code})") from None
            raise

    def list_sizes(self, prefix: str) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            sizes.update({item["Key"]: int(item["Size"]) for item in page.get("Contents", [])})
        return sizes


class GcsStore:
    """A Google Cloud Storage bucket through google-cloud-storage.

    GCS computes the MD5 (and CRC32C) of every object it stores from a single upload; the SDK checks
    each upload's transfer with CRC32C."""

    checksum = ContentChecksum("md5")

    def __init__(self, bucket: Any) -> None:
        self.bucket = bucket

    @classmethod
    def connect(cls, location: StorageUri) -> GcsStore:
        """The bucket of `location`, with Application Default Credentials."""
        from google.cloud import storage

        client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or None)
        return cls(client.bucket(location.bucket))

    def upload_file(self, local: Path, key: str, digests: FileDigests) -> None:
        blob = self.bucket.blob(key)
        blob.metadata = {METADATA_SHA256: digests.sha256}
        blob.upload_from_filename(str(local))

    def stored_checksum(self, key: str) -> str | None:
        blob = self.bucket.get_blob(key)
        return str(blob.md5_hash) if blob is not None and blob.md5_hash else None

    def get_bytes(self, key: str) -> bytes | None:
        stored = self.read(key)
        return stored.data if stored else None

    def read(self, key: str) -> StoredBytes | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        blob = self.bucket.get_blob(key)
        if blob is None:
            return None
        generation = blob.generation  # before the download, which resets it from its response headers
        try:  # the bytes of exactly the generation read: a newer one fails instead of mixing the two
            data = blob.download_as_bytes(if_generation_match=generation)
        except (NotFound, PreconditionFailed):
            raise ConcurrentWriteError(f"gs://{self.bucket.name}/{key} changed while being read") from None
        return StoredBytes(bytes(data), str(generation))

    def put_bytes(self, key: str, data: bytes, *, replacing: str | None) -> None:
        from google.api_core.exceptions import PreconditionFailed

        generation = int(replacing) if replacing is not None else 0  # 0: only if no live object exists
        try:
            self.bucket.blob(key).upload_from_string(
                data, content_type="application/json", if_generation_match=generation
            )
        except PreconditionFailed:
            raise ConcurrentWriteError(f"gs://{self.bucket.name}/{key} changed meanwhile") from None

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return {b.name: int(b.size) for b in self.bucket.list_blobs(prefix=prefix)}


class AzureStore:
    """An Azure Blob Storage container through azure-storage-blob.

    Every request carries an MD5 of its bytes, which Azure checks (`validate_content`). Azure computes
    a blob's Content-MD5 only for a single Put Blob (up to `single_put_size`); above it the blob is
    committed from blocks with the Content-MD5 this store read from the bytes it sent."""

    checksum = ContentChecksum("md5")

    def __init__(self, container: Any, single_put_size: int = AZURE_SINGLE_PUT_SIZE) -> None:
        self.container, self.single_put_size = container, single_put_size

    @classmethod
    def connect(cls, location: StorageUri, single_put_size: int = AZURE_SINGLE_PUT_SIZE) -> AzureStore:
        """The container of `location`: a connection string, an account key, else the Azure login or
        workload identity."""
        from azure.storage.blob import BlobServiceClient

        sizes: dict[str, Any] = {
            "max_single_put_size": single_put_size,
            "max_block_size": min(single_put_size, 8 << 20),
        }
        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        account_url = f"https://{location.account}.blob.core.windows.net"
        if connection:
            service = BlobServiceClient.from_connection_string(connection, **sizes)
        elif os.environ.get("AZURE_STORAGE_KEY") and location.account:
            key = {"account_name": location.account, "account_key": os.environ["AZURE_STORAGE_KEY"]}
            service = BlobServiceClient(account_url, credential=key, **sizes)
        elif location.account:
            # In the cluster (workload identity) or on a developer machine (az login): no key at all.
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:
                raise StorageError(
                    "Azure: set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_KEY, "
                    "or install azure-identity to use your Azure login / workload identity"
                ) from None
            service = BlobServiceClient(account_url, credential=DefaultAzureCredential(), **sizes)
        else:
            raise StorageError("Azure: the URI needs the storage account: as://ACCOUNT/CONTAINER/PREFIX")
        return cls(service.get_container_client(location.bucket), single_put_size)

    def upload_file(self, local: Path, key: str, digests: FileDigests) -> None:
        from azure.storage.blob import ContentSettings

        expected_md5 = base64.b64decode(digests.cloud_checksum)
        # Above one Put Blob Azure keeps the Content-MD5 it is given; below, it computes its own.
        blocks = digests.size > self.single_put_size
        headers = ContentSettings(content_md5=bytearray(expected_md5)) if blocks else None
        with open(local, "rb") as handle:
            sent = _Md5Reader(handle)
            self.container.upload_blob(
                key, sent, length=digests.size, overwrite=True, validate_content=True,
                metadata={METADATA_SHA256: digests.sha256}, content_settings=headers,
            )  # fmt: skip
        if sent.md5.digest() != expected_md5 or sent.size != digests.size:
            raise StorageError(
                f"{key}: the bytes sent differ from the checked file (it changed while uploading)"
            )

    def stored_checksum(self, key: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            md5 = self.container.get_blob_client(key).get_blob_properties().content_settings.content_md5
        except ResourceNotFoundError:
            return None
        return base64.b64encode(bytes(md5)).decode() if md5 else None

    def get_bytes(self, key: str) -> bytes | None:
        stored = self.read(key)
        return stored.data if stored else None

    def read(self, key: str) -> StoredBytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            download = self.container.download_blob(key)
        except ResourceNotFoundError:
            return None
        return StoredBytes(bytes(download.readall()), str(download.properties.etag))

    def put_bytes(self, key: str, data: bytes, *, replacing: str | None) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

        if replacing is None:  # If-None-Match: *
            condition: dict[str, Any] = {"match_condition": MatchConditions.IfMissing}
        else:
            condition = {"etag": replacing, "match_condition": MatchConditions.IfNotModified}
        try:
            self.container.upload_blob(key, data, overwrite=True, **condition)
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            raise ConcurrentWriteError(f"{self.container.container_name}/{key} changed meanwhile") from None

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return {b.name: int(b.size) for b in self.container.list_blobs(name_starts_with=prefix)}


def open_store(location: StorageUri) -> ObjectStore:
    """The store for `location`'s scheme (its SDK is imported now)."""
    stores: dict[str, Callable[[StorageUri], ObjectStore]] = {
        "s3": S3Store.connect, "gs": GcsStore.connect, "as": AzureStore.connect,
    }  # fmt: skip
    return stores[location.scheme](location)


class _Md5Reader:
    """A file read front to back (no `seek`, so the SDK reads it once, in order) and hashed on the way."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.md5, self.size = handle, hashlib.md5(usedforsecurity=False), 0

    def read(self, size: int = -1) -> bytes:
        chunk = bytes(self.handle.read(size))
        self.md5.update(chunk)
        self.size += len(chunk)
        return chunk
