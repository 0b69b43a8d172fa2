"""Upload a built model repository to object storage as a new version, atomically for Triton.

    tritonform model upload REPOSITORY --to s3://BUCKET/PREFIX      (or gs://BUCKET/PREFIX,
                                                                     as://ACCOUNT/CONTAINER/PREFIX)
    tritonform model upload REPOSITORY --stack aws-dev              (URI from the stack's outputs)

The bucket layout, URIs and credentials are `model_repo.storage`'s. Why an upload is atomic from
Triton's point of view: Triton is started with `--model-repository=<PREFIX>/versions/<id>` taken from
`CURRENT`, so it only ever sees a finished, immutable version. An upload writes every file of a new
version, lists it back and checks every name and size against the manifest, and only then replaces
`CURRENT` with one PUT (atomic in S3, GCS and Azure Blob). A failed or interrupted upload leaves
`CURRENT`, and so what serves, unchanged; uploading the content that is already current does nothing.
Old versions stay for rollback (expire them with a bucket lifecycle rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_repo.manifest import MANIFEST_FILE, read_manifest
from model_repo.storage import (
    POINTER,
    VERSIONS,
    ObjectStore,
    StorageError,
    StorageUri,
    new_version_id,
    open_store,
    pointer_for,
    read_pointer,
    version_key,
    write_pointer,
)


class UploadError(StorageError):
    """The upload could not be done or verified; what serves is unchanged. The message says why."""


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
    manifest = read_manifest(repository)
    location = StorageUri.parse(destination)
    store = store or open_store(location)
    content = str(manifest["content_sha256"])
    current = read_pointer(store, location)
    if current and current.get("content_sha256") == content:
        return UploadResult(
            str(current["version"]), str(current["repository"]), location.uri(POINTER), 0, 0, True
        )

    version = new_version_id(now(), content)
    files: dict[str, dict[str, Any]] = manifest["files"]
    total = 0
    for relative, info in sorted(files.items()):
        local = repository / relative
        if not local.is_file() or local.stat().st_size != info["size"]:
            raise UploadError(f"{local} changed since the build; rebuild the repository before uploading")
        store.upload_file(local, version_key(location, version, relative))
        total += int(info["size"])
        if progress:
            progress(relative, int(info["size"]))
    store.upload_file(repository / MANIFEST_FILE, version_key(location, version, MANIFEST_FILE))

    _verify(store, location, version, files)
    previous = current.get("version") if current else None
    pointer = pointer_for(location, version, content, now().isoformat(), previous)
    write_pointer(store, location, pointer)
    return UploadResult(version, str(pointer["repository"]), location.uri(POINTER), len(files), total)


def _verify(store: ObjectStore, location: StorageUri, version: str, files: dict[str, dict[str, Any]]) -> None:
    base = version_key(location, version) + "/"
    listed = {key.removeprefix(base): size for key, size in store.list_sizes(base).items()}
    expected = {name: int(info["size"]) for name, info in files.items()}
    wrong = sorted(name for name, size in expected.items() if listed.get(name) != size)
    if wrong or MANIFEST_FILE not in listed:
        raise UploadError(
            f"verification of {location.uri(VERSIONS, version)} failed for {wrong[:5] or [MANIFEST_FILE]}; "
            "CURRENT was not changed, the previous version still serves"
        )
