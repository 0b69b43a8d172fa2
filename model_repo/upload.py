"""Upload a built model repository to object storage as a new, verified version.

    tritonform model upload REPOSITORY --to s3://BUCKET/PREFIX      (or gs://BUCKET/PREFIX,
                                                                     as://ACCOUNT/CONTAINER/PREFIX)
    tritonform model upload REPOSITORY --stack aws-dev              (URI from the stack's outputs)

The bucket layout, URIs and pointer are `model_repo.storage`'s, the stores `model_repo.object_stores`'.
An upload:

1. reads each file once, checking its size and sha256 against the manifest (else: "changed since the
   build") and computing, from the same bytes, the checksum its cloud will compute of it;
2. uploads it under `PREFIX/versions/<id>/` (the SDK's own transfer checksums cover each request);
3. lists the version back (every name and size) and asks the cloud for the checksum it computed of each
   stored object, which must equal the one from step 1;
4. only then uploads `REPOSITORY.json` (verified the same way), so its presence means a complete version;
5. replaces `CURRENT` with a conditional write against the revision read at the start: if another upload
   changed it meanwhile, this one fails and says so (the version it wrote stays, unused).

What step 3 proves, per cloud (nothing is downloaded back):
- S3: the SHA-256 S3 computed of the stored bytes equals the file's, which equals the manifest's (files
  below the part size, 64 MiB); above it S3 reports the SHA-256 of its parts' SHA-256s, which is compared
  with the same composite of the local file, and S3 checked each part's SHA-256 on receipt. SHA-256
  strength either way.
- GCS: the MD5 GCS computed of the stored bytes equals the MD5 of the local bytes whose sha256 equals the
  manifest's. Proof against corruption, truncation and mix-ups; not against someone with write access to
  the bucket who crafts an MD5 collision.
- Azure: for blobs up to 64 MiB (one Put Blob), the same as GCS: Azure computed the MD5 itself. For larger
  blobs Azure computes no whole-blob hash: it checked every block against the MD5 sent with it, the store
  hashed the bytes it sent (the same MD5 as the checked file, else the upload fails), and step 3 proves the
  blob still carries the Content-MD5 of that commit, i.e. no writer replaced it without setting the same
  MD5; it does not re-prove the stored bytes.
The sha256 also stored as object metadata is for people and tools: no cloud checks it, so nothing trusts it.

A failed or interrupted upload leaves `CURRENT` unchanged (and, through the CLI, the stack's serving
version); uploading the content that is already current does nothing. Old versions stay for rollback
(expire them with a bucket lifecycle rule).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_repo.manifest import MANIFEST_FILE, parse_manifest
from model_repo.object_stores import open_store
from model_repo.storage import (
    POINTER,
    VERSIONS,
    ConcurrentWriteError,
    FileDigests,
    ObjectStore,
    StorageError,
    StorageUri,
    checksums_match,
    digest_file,
    new_version_id,
    pointer_for,
    read_pointer,
    read_pointer_revision,
    version_key,
    write_pointer,
)


class UploadError(StorageError):
    """The upload could not be done or verified; CURRENT is unchanged. The message says why."""


@dataclass(frozen=True)
class UploadResult:
    """The version an upload made current (or found already current)."""

    version: str
    repository_uri: str  # what Triton's --model-repository should be
    pointer_uri: str
    uploaded_files: int
    uploaded_bytes: int
    already_current: bool = False


def upload_repository(
    repository: Path,
    destination: str,
    *,
    store: ObjectStore | None = None,
    progress: Callable[[str, int], None] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> UploadResult:
    """Upload `repository` as a new version under `destination`; see the module docs.

    `progress(relative_path, size)` is called after each file.
    """
    manifest_path = Path(repository) / MANIFEST_FILE
    try:
        manifest_bytes = manifest_path.read_bytes()
    except OSError:
        manifest_bytes = b""
    manifest = parse_manifest(manifest_bytes, str(repository))
    location = StorageUri.parse(destination)
    store = store or open_store(location)
    content = str(manifest["content_sha256"])
    current, revision = read_pointer_revision(store, location)
    if current and current.get("content_sha256") == content:
        return UploadResult(
            str(current["version"]), str(current["repository"]), location.uri(POINTER), 0, 0, True
        )

    version = new_version_id(now(), content)
    files: dict[str, dict[str, Any]] = manifest["files"]
    uploaded: dict[str, FileDigests] = {}
    for relative, info in sorted(files.items()):
        local = repository / relative
        digests = _checked_digests(local, store, int(info["size"]), str(info["sha256"]))
        store.upload_file(local, version_key(location, version, relative), digests)
        uploaded[relative] = digests
        if progress:
            progress(relative, digests.size)
    _verify(store, location, version, uploaded)

    # Last, and only once everything it lists is verified: its presence marks a complete version.
    manifest_digests = _checked_digests(
        manifest_path, store, len(manifest_bytes), hashlib.sha256(manifest_bytes).hexdigest()
    )
    store.upload_file(manifest_path, version_key(location, version, MANIFEST_FILE), manifest_digests)
    _verify(store, location, version, {MANIFEST_FILE: manifest_digests})

    previous = current.get("version") if current else None
    pointer = pointer_for(location, version, content, now().isoformat(), previous)
    try:
        write_pointer(store, location, pointer, replacing=revision)
    except ConcurrentWriteError:
        winner = read_pointer(store, location)
        named = str(winner.get("version")) if winner else "nothing (it was deleted)"
        raise UploadError(
            f"another upload changed CURRENT to {named} meanwhile; nothing serves differently; "
            "run the upload again"
        ) from None
    uploaded_bytes = sum(d.size for d in uploaded.values())
    return UploadResult(
        version, str(pointer["repository"]), location.uri(POINTER), len(files), uploaded_bytes
    )


def _checked_digests(local: Path, store: ObjectStore, size: int, sha256: str) -> FileDigests:
    """The file's digests, from one read that also checks it is still what the build wrote."""
    try:
        digests = digest_file(local, store.checksum)
    except OSError:
        digests = None
    if digests is None or digests.size != size or digests.sha256 != sha256:
        raise UploadError(f"{local} changed since the build; rebuild the repository before uploading")
    return digests


def _verify(store: ObjectStore, location: StorageUri, version: str, expected: dict[str, FileDigests]) -> None:
    """Every file listed with its size, and the checksum the cloud computed of it equal to the local one."""
    base = version_key(location, version) + "/"
    listed = {key.removeprefix(base): size for key, size in store.list_sizes(base).items()}
    wrong = sorted(name for name, digests in expected.items() if listed.get(name) != digests.size)
    problem = "missing, or a different size"
    if not wrong:
        wrong = [
            name
            for name, digests in sorted(expected.items())
            if not checksums_match(store.stored_checksum(base + name), digests.cloud_checksum)
        ]
        problem = "the stored content differs from the built file (checksum computed by the cloud)"
    if wrong:
        raise UploadError(
            f"verification of {location.uri(VERSIONS, version)} failed for {wrong[:5]}: {problem}; "
            "CURRENT was not changed"
        )
