"""Where built repositories live in object storage: URIs, the stores, versions and the CURRENT pointer.

URIs take the form Triton's `--model-repository` takes, so the same string works for both:
`s3://BUCKET/PREFIX` (or `s3://HOST:PORT/BUCKET/PREFIX` for an emulator), `gs://BUCKET/PREFIX`,
`as://ACCOUNT/CONTAINER/PREFIX`. Bucket layout (written by `model_repo.upload`):

    PREFIX/versions/<UTC time>-<content hash>/...        one complete repository, never modified
    PREFIX/versions/<id>/REPOSITORY.json                 uploaded last: present = version complete
    PREFIX/CURRENT                                       {"version", "repository", "content_sha256", ...}

Triton serves `PREFIX/versions/<id>` taken from `CURRENT` (the model locator reads it at pod start), so
it only ever sees a finished, immutable version.

Credentials come from each SDK's usual chain (AWS: env/profile/IRSA; GCS: ADC; Azure:
`AZURE_STORAGE_CONNECTION_STRING`, else `AZURE_STORAGE_KEY` for the account in the URI, else the
Azure login or workload identity through azure-identity). Emulators:
`s3://HOST:PORT/BUCKET/...` (Triton's own form) or `AWS_ENDPOINT_URL_S3`; `STORAGE_EMULATOR_HOST`
for GCS; an azurite connection string for Azure. The SDKs are imported only by the store that needs one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

POINTER = "CURRENT"
VERSIONS = "versions"


class StorageError(RuntimeError):
    """A storage location or its content cannot be used; the message says why."""


@dataclass(frozen=True)
class StorageUri:
    """A parsed `s3://`, `gs://` or `as://` location (Triton's formats)."""

    scheme: str  # s3 | gs | as
    bucket: str  # S3/GCS bucket, Azure container
    prefix: str  # no leading or trailing '/'
    endpoint: str | None = None  # s3://host:port/... -> http://host:port
    account: str | None = None  # Azure storage account

    @classmethod
    def parse(cls, uri: str) -> StorageUri:
        """Parse a URI; `StorageError` names the accepted forms."""
        match = re.match(r"^(s3|gs|as)://(.+)$", uri.strip())
        if not match:
            raise StorageError(
                f"{uri!r}: use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or as://ACCOUNT/CONTAINER/PREFIX"
            )
        scheme, rest = match.group(1), match.group(2)
        parts = [p for p in rest.split("/") if p]
        endpoint = account = None
        if scheme == "s3" and parts and re.match(r"^[^:]+:\d+$", parts[0]):
            endpoint = f"http://{parts.pop(0)}"
        if scheme == "as":
            if not parts:
                raise StorageError(f"{uri!r}: as:// needs an account: as://ACCOUNT/CONTAINER/PREFIX")
            account = parts.pop(0)
        if not parts:
            raise StorageError(f"{uri!r}: the bucket (or container) name is missing")
        return cls(scheme, parts[0], "/".join(parts[1:]), endpoint, account)

    def key(self, *parts: str) -> str:
        """The object key of `parts` under the prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def uri(self, *parts: str) -> str:
        """The URI of `parts` under the prefix, in Triton's form."""
        head = {"s3": self.endpoint.removeprefix("http://") if self.endpoint else None, "as": self.account}
        segments = [s for s in (head.get(self.scheme), self.bucket, self.key(*parts)) if s]
        return f"{self.scheme}://" + "/".join(segments)


class ObjectStore(Protocol):
    """The four operations an upload and the model locator need."""

    def upload_file(self, local: Path, key: str) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def list_sizes(self, prefix: str) -> dict[str, int]: ...


class S3Store:
    """An S3 bucket (or an S3-compatible emulator at the URI's host:port) through boto3."""

    def __init__(self, location: StorageUri) -> None:
        import boto3

        self.bucket = location.bucket
        self.client = boto3.client("s3", endpoint_url=location.endpoint)

    def upload_file(self, local: Path, key: str) -> None:
        self.client.upload_file(str(local), self.bucket, key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except self.client.exceptions.NoSuchKey:
            return None

    def list_sizes(self, prefix: str) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            sizes.update({item["Key"]: int(item["Size"]) for item in page.get("Contents", [])})
        return sizes


class GcsStore:
    """A Google Cloud Storage bucket through google-cloud-storage."""

    def __init__(self, location: StorageUri) -> None:
        from google.cloud import storage

        client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or None)
        self.bucket = client.bucket(location.bucket)
        self.client = client

    def upload_file(self, local: Path, key: str) -> None:
        self.bucket.blob(key).upload_from_filename(str(local))

    def put_bytes(self, key: str, data: bytes) -> None:
        self.bucket.blob(key).upload_from_string(data, content_type="application/json")

    def get_bytes(self, key: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        try:
            return bytes(self.bucket.blob(key).download_as_bytes())
        except NotFound:
            return None

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return {b.name: int(b.size) for b in self.client.list_blobs(self.bucket, prefix=prefix)}


class AzureStore:
    """An Azure Blob Storage container through azure-storage-blob."""

    def __init__(self, location: StorageUri) -> None:
        from azure.storage.blob import BlobServiceClient

        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection:
            service = BlobServiceClient.from_connection_string(connection)
        elif os.environ.get("AZURE_STORAGE_KEY") and location.account:
            key = {"account_name": location.account, "account_key": os.environ["AZURE_STORAGE_KEY"]}
            service = BlobServiceClient(f"https://{location.account}.blob.core.windows.net", credential=key)
        elif location.account:
            # In the cluster (workload identity) or on a developer machine (az login): no key at all.
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:
                raise StorageError(
                    "Azure: set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_KEY, "
                    "or install azure-identity to use your Azure login / workload identity"
                ) from None
            service = BlobServiceClient(
                f"https://{location.account}.blob.core.windows.net", credential=DefaultAzureCredential()
            )
        else:
            raise StorageError("Azure: the URI needs the storage account: as://ACCOUNT/CONTAINER/PREFIX")
        self.container = service.get_container_client(location.bucket)

    def upload_file(self, local: Path, key: str) -> None:
        with open(local, "rb") as data:
            self.container.upload_blob(key, data, overwrite=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.container.upload_blob(key, data, overwrite=True)

    def get_bytes(self, key: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return bytes(self.container.download_blob(key).readall())
        except ResourceNotFoundError:
            return None

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return {b.name: int(b.size) for b in self.container.list_blobs(name_starts_with=prefix)}


def open_store(location: StorageUri) -> ObjectStore:
    """The store for `location`'s scheme (its SDK is imported now)."""
    stores: dict[str, Callable[[StorageUri], ObjectStore]] = {"s3": S3Store, "gs": GcsStore, "as": AzureStore}
    return stores[location.scheme](location)


def read_pointer(store: ObjectStore, location: StorageUri) -> dict[str, Any] | None:
    """The current version's pointer, or None if nothing was uploaded yet."""
    raw = store.get_bytes(location.key(POINTER))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise StorageError(f"{location.uri(POINTER)} is not valid JSON; fix or delete it") from None
    return data if isinstance(data, dict) else None


def new_version_id(when: datetime, content_sha256: str) -> str:
    """The id of a version uploaded at `when` (UTC) with this content: sorts by time, names the content."""
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{content_sha256[:12]}"


def version_key(location: StorageUri, version: str, *parts: str) -> str:
    """The object key of `parts` inside a version's repository."""
    return location.key(VERSIONS, version, *parts)


def pointer_for(
    location: StorageUri, version: str, content_sha256: str, uploaded_at: str, previous: str | None
) -> dict[str, Any]:
    """The `CURRENT` record naming `version`: `repository` is the URI Triton serves from."""
    return {
        "version": version,
        "repository": location.uri(VERSIONS, version),
        "content_sha256": content_sha256,
        "uploaded_at": uploaded_at,
        "previous": previous,
    }


def write_pointer(store: ObjectStore, location: StorageUri, pointer: dict[str, Any]) -> None:
    """Replace `CURRENT` with `pointer` in one write (atomic in S3, GCS and Azure Blob)."""
    store.put_bytes(location.key(POINTER), json.dumps(pointer, indent=2).encode())
