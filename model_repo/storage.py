"""Where built repositories live in object storage: URIs, versions, checksums and the CURRENT pointer.

URIs take the form Triton's `--model-repository` takes, so the same string works for both:
`s3://BUCKET/PREFIX` (or `s3://HOST:PORT/BUCKET/PREFIX` for an emulator), `gs://BUCKET/PREFIX`,
`as://ACCOUNT/CONTAINER/PREFIX`. Bucket layout (written by `model_repo.upload`):

    PREFIX/versions/<UTC time>-<content hash>/...        one complete repository, never modified
    PREFIX/versions/<id>/REPOSITORY.json                 written once every other file is verified:
                                                         present = the version is complete
    PREFIX/CURRENT                                       {"version", "repository", "content_sha256", ...}

What serves is pinned per stack (`tritonform:triton.modelVersion`); the model locator checks that version
against its manifest at pod start. `CURRENT` names the latest upload (for tools and `--version current`)
and is only ever replaced by a conditional write (`write_pointer(replacing=...)`), so of two uploads that
race, one wins and the other says so.

The stores themselves (S3, GCS, Azure, and their credentials and emulators) are in
model_repo/object_stores.py; this module is the standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

POINTER = "CURRENT"
VERSIONS = "versions"
# `new_version_id`'s form; infra/settings/serving.py checks triton.modelVersion with the same pattern.
VERSION_PATTERN = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}$")
# Object metadata naming the file's sha256: informative only, since no cloud checks metadata.
METADATA_SHA256 = "sha256"
S3_PART_SIZE = 64 << 20  # S3 stores files of at least this size in parts of this size
S3_MAX_PARTS = 10_000
AZURE_SINGLE_PUT_SIZE = 64 << 20  # Azure blobs up to this size are one Put Blob (Azure computes their MD5)


class StorageError(RuntimeError):
    """A storage location or its content cannot be used; the message says why."""


class ConcurrentWriteError(StorageError):
    """A conditional write found the object changed (or created, or deleted) since it was read."""


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


@dataclass(frozen=True)
class ContentChecksum:
    """How a cloud checksums the objects it stores, so that the same value can be computed locally.

    `algorithm` (a hashlib name) over the whole object, reported in base64. With `part_size`, objects
    of at least that size are stored in parts (doubled until at most `S3_MAX_PARTS` of them) and the
    cloud reports the `algorithm` of the parts' concatenated digests plus `-<parts>` (S3's composite).
    """

    algorithm: str
    part_size: int | None = None

    def part_size_for(self, size: int) -> int | None:
        """The part size a file of `size` bytes is stored with; None when it is stored whole."""
        if self.part_size is None or size < self.part_size:
            return None
        part = self.part_size
        while math.ceil(size / part) > S3_MAX_PARTS:  # the same rule as boto3's transfer manager
            part *= 2
        return part


@dataclass(frozen=True)
class FileDigests:
    """One read of a local file: its size, its sha256 (hex, as manifests record it) and the value the
    cloud's `ContentChecksum` must report for an object holding exactly these bytes."""

    size: int
    sha256: str
    cloud_checksum: str


def digest_file(path: Path, checksum: ContentChecksum) -> FileDigests:
    """Read `path` once and return its size, sha256 and the cloud checksum of its content."""
    whole, cloud = hashlib.sha256(), hashlib.new(checksum.algorithm, usedforsecurity=False)
    part_size = checksum.part_size_for(path.stat().st_size)
    part_digests: list[bytes] = []
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(part_size or 1 << 20), b""):
            size += len(chunk)
            whole.update(chunk)
            if part_size:  # each read is exactly one part
                part_digests.append(hashlib.new(checksum.algorithm, chunk, usedforsecurity=False).digest())
            else:
                cloud.update(chunk)
    if part_size:
        composite = hashlib.new(checksum.algorithm, b"".join(part_digests), usedforsecurity=False)
        value = f"{base64.b64encode(composite.digest()).decode()}-{len(part_digests)}"
    else:
        value = base64.b64encode(cloud.digest()).decode()
    return FileDigests(size, whole.hexdigest(), value)


def checksums_match(stored: str | None, expected: str) -> bool:
    """Whether a cloud's reported checksum is `expected`; a composite may be reported without `-<parts>`."""
    if not stored:
        return False
    return stored == expected or ("-" in expected and "-" not in stored and stored == expected.split("-")[0])


@dataclass(frozen=True)
class StoredBytes:
    """An object's content and its revision (S3/Azure ETag, GCS generation) for a conditional write."""

    data: bytes
    revision: str


class ObjectStore(Protocol):
    """What an upload and the model locator need of a bucket."""

    checksum: ContentChecksum

    def upload_file(self, local: Path, key: str, digests: FileDigests) -> None:
        """Store `local` at `key` (its `digests` from the caller's own read of it)."""
        ...

    def stored_checksum(self, key: str) -> str | None:
        """The checksum the cloud computed of the object at `key` (`checksum`'s form); None if none."""
        ...

    def get_bytes(self, key: str) -> bytes | None:
        """The object's content; None if there is none."""
        ...

    def read(self, key: str) -> StoredBytes | None:
        """The object's content and revision; None if there is none."""
        ...

    def put_bytes(self, key: str, data: bytes, *, replacing: str | None) -> None:
        """Write `data` only if the object is still at revision `replacing` (absent when None);
        `ConcurrentWriteError` otherwise."""
        ...

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """The size of every object whose key starts with `prefix`."""
        ...


def check_version_id(version: str) -> str:
    """`version` if it has `new_version_id`'s form; `StorageError` otherwise."""
    if not VERSION_PATTERN.match(version):
        raise StorageError(
            f"{version!r} is not a model version: versions look like 20261201T101500Z-0123456789ab "
            "(`tritonform model upload` prints them)"
        )
    return version


def version_content_prefix(version: str) -> str:
    """The part of a version id taken from its content hash (the first 12 hex digits)."""
    return check_version_id(version).rsplit("-", 1)[1]


def read_pointer_revision(
    store: ObjectStore, location: StorageUri
) -> tuple[dict[str, Any] | None, str | None]:
    """`CURRENT`'s record and its revision (both None if nothing was uploaded yet)."""
    stored = store.read(location.key(POINTER))
    if stored is None:
        return None, None
    try:
        data = json.loads(stored.data)
    except ValueError:
        raise StorageError(f"{location.uri(POINTER)} is not valid JSON; fix or delete it") from None
    return (data if isinstance(data, dict) else None), stored.revision


def read_pointer(store: ObjectStore, location: StorageUri) -> dict[str, Any] | None:
    """The current version's pointer, or None if nothing was uploaded yet."""
    return read_pointer_revision(store, location)[0]


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


def write_pointer(
    store: ObjectStore, location: StorageUri, pointer: dict[str, Any], replacing: str | None
) -> None:
    """Replace `CURRENT` with `pointer` in one write, only if it is still at revision `replacing` (absent
    when None); `ConcurrentWriteError` when another writer changed it since it was read."""
    store.put_bytes(location.key(POINTER), json.dumps(pointer, indent=2).encode(), replacing=replacing)
