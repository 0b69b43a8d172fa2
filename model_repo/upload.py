"""Upload a built model repository to object storage as a new version, atomically for Triton.

    tritonform model upload REPOSITORY --to s3://BUCKET/PREFIX      (or gs://BUCKET/PREFIX,
                                                                     as://ACCOUNT/CONTAINER/PREFIX)
    tritonform model upload REPOSITORY --stack aws-dev              (URI from the stack's outputs)

Bucket layout (URIs in the form Triton's `--model-repository` takes, so the same string works):

    PREFIX/versions/<UTC time>-<content hash>/...        one complete repository, never modified
    PREFIX/versions/<id>/REPOSITORY.json                 uploaded last: present = version complete
    PREFIX/CURRENT                                       {"version", "repository", "content_sha256", ...}

Why this is atomic from Triton's point of view: Triton is started with
`--model-repository=<PREFIX>/versions/<id>` taken from `CURRENT` (the workload's start-up step reads
it), so it only ever sees a finished, immutable version. An upload writes every file of a new
version, lists it back and checks every name and size against the manifest, and only then
replaces `CURRENT` with one PUT (atomic in S3, GCS and Azure Blob). A failed or interrupted
upload leaves `CURRENT`, and so what serves, unchanged; uploading the content that is already
current does nothing. Old versions stay for rollback (expire them with a bucket lifecycle rule).

Credentials come from each SDK's usual chain (AWS: env/profile/IRSA; GCS: ADC; Azure:
`AZURE_STORAGE_CONNECTION_STRING`, else `AZURE_STORAGE_KEY` for the account in the URI, else the
Azure login or workload identity through azure-identity). Emulators:
`s3://HOST:PORT/BUCKET/...` (Triton's own form) or `AWS_ENDPOINT_URL_S3`; `STORAGE_EMULATOR_HOST`
for GCS; an azurite connection string for Azure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from model_repo.layout import MANIFEST_FILE, read_manifest

POINTER = "CURRENT"
VERSIONS = "versions"
# The stack output infra/program.py exports: the bucket prefix Triton serves versions from.
STACK_OUTPUT_KEYS = ("model_repository_uri",)


class UploadError(RuntimeError):
    """The upload could not be done or verified; what serves is unchanged. The message says why."""


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
        match = re.match(r"^(s3|gs|as)://(.+)$", uri.strip())
        if not match:
            raise UploadError(
                f"{uri!r}: use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or as://ACCOUNT/CONTAINER/PREFIX"
            )
        scheme, rest = match.group(1), match.group(2)
        parts = [p for p in rest.split("/") if p]
        endpoint = account = None
        if scheme == "s3" and parts and re.match(r"^[^:]+:\d+$", parts[0]):
            endpoint = f"http://{parts.pop(0)}"
        if scheme == "as":
            if not parts:
                raise UploadError(f"{uri!r}: as:// needs an account: as://ACCOUNT/CONTAINER/PREFIX")
            account = parts.pop(0)
        if not parts:
            raise UploadError(f"{uri!r}: the bucket (or container) name is missing")
        return cls(scheme, parts[0], "/".join(parts[1:]), endpoint, account)

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def uri(self, *parts: str) -> str:
        """The URI of `parts` under the prefix, in Triton's form."""
        head = {"s3": self.endpoint.removeprefix("http://") if self.endpoint else None, "as": self.account}
        segments = [s for s in (head.get(self.scheme), self.bucket, self.key(*parts)) if s]
        return f"{self.scheme}://" + "/".join(segments)


class ObjectStore(Protocol):
    """The four operations an upload needs."""

    def upload_file(self, local: Path, key: str) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def list_sizes(self, prefix: str) -> dict[str, int]: ...


class S3Store:
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
                raise UploadError(
                    "Azure: set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_KEY, "
                    "or install azure-identity to use your Azure login / workload identity"
                ) from None
            service = BlobServiceClient(
                f"https://{location.account}.blob.core.windows.net", credential=DefaultAzureCredential()
            )
        else:
            raise UploadError("Azure: the URI needs the storage account: as://ACCOUNT/CONTAINER/PREFIX")
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
    stores: dict[str, Callable[[StorageUri], ObjectStore]] = {"s3": S3Store, "gs": GcsStore, "as": AzureStore}
    return stores[location.scheme](location)


@dataclass(frozen=True)
class UploadResult:
    version: str
    repository_uri: str  # what Triton's --model-repository should be
    pointer_uri: str
    uploaded_files: int
    uploaded_bytes: int
    already_current: bool = False


def read_pointer(store: ObjectStore, location: StorageUri) -> dict[str, Any] | None:
    """The current version's pointer, or None if nothing was uploaded yet."""
    raw = store.get_bytes(location.key(POINTER))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise UploadError(f"{location.uri(POINTER)} is not valid JSON; fix or delete it") from None
    return data if isinstance(data, dict) else None


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

    version = f"{now().strftime('%Y%m%dT%H%M%SZ')}-{content[:12]}"
    files: dict[str, dict[str, Any]] = manifest["files"]
    total = 0
    for relative, info in sorted(files.items()):
        local = repository / relative
        if not local.is_file() or local.stat().st_size != info["size"]:
            raise UploadError(f"{local} changed since the build; rebuild the repository before uploading")
        store.upload_file(local, location.key(VERSIONS, version, relative))
        total += int(info["size"])
        if progress:
            progress(relative, int(info["size"]))
    store.upload_file(repository / MANIFEST_FILE, location.key(VERSIONS, version, MANIFEST_FILE))

    _verify(store, location, version, files)
    pointer = {
        "version": version,
        "repository": location.uri(VERSIONS, version),
        "content_sha256": content,
        "uploaded_at": now().isoformat(),
        "previous": current.get("version") if current else None,
    }
    store.put_bytes(location.key(POINTER), json.dumps(pointer, indent=2).encode())
    return UploadResult(version, str(pointer["repository"]), location.uri(POINTER), len(files), total)


def _verify(store: ObjectStore, location: StorageUri, version: str, files: dict[str, dict[str, Any]]) -> None:
    base = location.key(VERSIONS, version) + "/"
    listed = {key.removeprefix(base): size for key, size in store.list_sizes(base).items()}
    expected = {name: int(info["size"]) for name, info in files.items()}
    wrong = sorted(name for name, size in expected.items() if listed.get(name) != size)
    if wrong or MANIFEST_FILE not in listed:
        raise UploadError(
            f"verification of {location.uri(VERSIONS, version)} failed for {wrong[:5] or [MANIFEST_FILE]}; "
            "CURRENT was not changed, the previous version still serves"
        )


def resolve_stack_uri(stack: str, run: Callable[..., Any] = subprocess.run) -> str:
    """The model repository URI that `pulumi up` exported for `stack`."""
    if shutil.which("pulumi") is None and run is subprocess.run:
        raise UploadError(
            "the pulumi CLI is not installed, so --stack cannot be resolved; pass --to URI instead"
        )
    done = run(["pulumi", "stack", "output", "--json", "--stack", stack], capture_output=True, text=True)
    if done.returncode != 0:
        raise UploadError(f"`pulumi stack output --stack {stack}` failed: {done.stderr.strip()}")
    outputs = json.loads(done.stdout or "{}")
    for key in STACK_OUTPUT_KEYS:
        if isinstance(outputs.get(key), str):
            return str(outputs[key])
    raise UploadError(f"stack {stack} has no output {' or '.join(STACK_OUTPUT_KEYS)}; run `pulumi up` first")


def register_upload(model_app: Any) -> None:
    """Add `upload` to the `tritonform model` typer sub-app."""

    @model_app.command("upload")
    def upload(
        repository: Annotated[Path, typer.Argument(help="A repository written by `tritonform build`.")],
        to: Annotated[str | None, typer.Option("--to", help="s3://, gs:// or as:// prefix.")] = None,
        stack: Annotated[str | None, typer.Option("--stack", help="Upload to this stack's bucket.")] = None,
    ) -> None:
        """Upload a built repository as a new version; the version that serves changes only at the end."""
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        console = Console(stderr=True)
        if (to is None) == (stack is None):
            console.print("[red]Give exactly one of --to URI or --stack NAME.[/red]")
            raise typer.Exit(2)
        try:
            destination = to if to is not None else resolve_stack_uri(str(stack))
            size = sum(int(f["size"]) for f in read_manifest(repository)["files"].values())
            with Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console
            ) as bar:
                task = bar.add_task(f"uploading to {destination}", total=size)
                result = upload_repository(
                    repository, destination, progress=lambda _name, n: bar.advance(task, n)
                )
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted; CURRENT was not changed.[/yellow]")
            raise typer.Exit(130) from None
        except Exception as exc:  # SDK errors (credentials, missing bucket) are user-facing too
            console.print(f"[red]Upload failed ({type(exc).__name__}):[/red] {exc}")
            console.print("CURRENT was not changed; the previous version still serves.")
            raise typer.Exit(1) from None
        if result.already_current:
            console.print(f"Already current: version {result.version} ({result.repository_uri})")
        else:
            console.print(f"Uploaded version {result.version}: {result.uploaded_files} files")
        typer.echo(result.repository_uri)
