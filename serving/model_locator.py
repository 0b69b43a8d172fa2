"""Check and locate the serving version of a model repository in object storage, at pod start.

`tritonform model upload` writes immutable versions under `PREFIX/versions/<id>/` (see
model_repo/storage.py), and the stack pins the one that serves (`tritonform:triton.modelVersion`). In the
cluster, an init container of each Deployment runs, with that version:

    python -m serving.model_locator resolve   --prefix s3://BUCKET/models --version V --out /shared/repository
    python -m serving.model_locator tokenizer --prefix s3://BUCKET/models --version V --model llm \\
        --dest /shared/model

Both first check V: it has the form `tritonform model upload` gives versions, `PREFIX/versions/V/
REPOSITORY.json` exists (it is written last, once every file is verified), that manifest's file list
hashes to its `content_sha256` and that hash starts with the hash part of V. Then `resolve` checks that
every file the manifest lists is there with its size and writes `PREFIX/versions/V` for Triton's
`--model-repository`; `tokenizer` copies the model's tokenizer.json and generation.json for the gateway
(chat template, token counts), each checked against the sha256 the manifest records. Anything else is
refused with one line and exit status 2, so a pod never serves a version other than V, nor a partial or
altered one.

`--version current` (for tools, not the cluster) takes the version `PREFIX/CURRENT` names, and refuses a
pointer whose `repository` is not `PREFIX/versions/<its version>` or whose hash differs from the
manifest's. Both commands use the pod's workload identity (no keys).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_repo.manifest import MANIFEST_FILE, content_digest, engine_parts, engine_subdir, parse_manifest
from model_repo.object_stores import open_store
from model_repo.runtime.contract import METADATA_FILE, TOKENIZER_FILE
from model_repo.storage import (
    POINTER,
    VERSIONS,
    ObjectStore,
    StorageError,
    StorageUri,
    check_version_id,
    read_pointer,
    version_content_prefix,
    version_key,
)

TOKENIZER_FILES = (TOKENIZER_FILE, METADATA_FILE)
CURRENT_VERSION = "current"  # `--version current`: the version CURRENT names (tools only)


class LocatorError(RuntimeError):
    """The bucket has no usable serving version; the message says what to do."""


@dataclass(frozen=True)
class CheckedVersion:
    """A version whose manifest was read and checked against its id."""

    location: StorageUri
    store: ObjectStore
    version: str
    manifest_bytes: bytes
    manifest: dict[str, Any]

    @property
    def uri(self) -> str:
        """The version's repository, in Triton's `--model-repository` form."""
        return self.location.uri(VERSIONS, self.version)


def check_version(prefix: str, version: str) -> CheckedVersion:
    """Version `version` (or `current`) under `prefix`, refused unless its manifest matches its id."""
    pointed_content: str | None = None
    try:
        location = StorageUri.parse(prefix)
        store = open_store(location)
        if version == CURRENT_VERSION:
            version, pointed_content = _current_version(store, location, prefix)
        expected_hash = version_content_prefix(version)
        manifest_uri = location.uri(VERSIONS, version, MANIFEST_FILE)
        raw = _read(store, version_key(location, version, MANIFEST_FILE), manifest_uri)
        if raw is None:
            raise LocatorError(
                f"version {version} is not in {prefix}: {manifest_uri} does not exist (never uploaded "
                "there, or its upload did not finish); upload the model again or set "
                "tritonform:triton.modelVersion to a version that exists"
            )
        manifest = parse_manifest(raw, manifest_uri)
    except (StorageError, ValueError) as exc:
        raise LocatorError(str(exc)) from None
    content = str(manifest.get("content_sha256", ""))
    if content != content_digest(manifest["files"]) or not content.startswith(expected_hash):
        raise LocatorError(
            f"{manifest_uri} does not belong to version {version} (its content hash is "
            f"{content[:12] or 'missing'}): refusing to serve it; upload the model again"
        )
    if pointed_content is not None and pointed_content != content:
        raise LocatorError(
            f"{location.uri(POINTER)} names content {pointed_content[:12]} but version {version} holds "
            f"{content[:12]}: refusing it; upload the model again"
        )
    return CheckedVersion(location, store, version, raw, manifest)


def current_repository(prefix: str) -> str:
    """The URI of the version `PREFIX/CURRENT` names, checked like any version (tools only)."""
    return version_repository(prefix, CURRENT_VERSION)


def version_repository(prefix: str, version: str) -> str:
    """The URI of version `version` for Triton, once every file its manifest lists is there whole."""
    checked = check_version(prefix, version)
    base = version_key(checked.location, checked.version) + "/"
    try:
        listed = {key.removeprefix(base): size for key, size in checked.store.list_sizes(base).items()}
    except Exception as exc:  # an SDK error (credentials, network) is one clear line too
        raise LocatorError(f"could not list {checked.uri}: {type(exc).__name__}: {exc}") from None
    missing = sorted(
        name for name, info in checked.manifest["files"].items() if listed.get(name) != int(info["size"])
    )
    if missing:
        raise LocatorError(
            f"version {checked.version} in {prefix} is incomplete ({len(missing)} files missing or of "
            f"another size, e.g. {missing[0]}): refusing to serve it; upload the model again"
        )
    return checked.uri


def sync_version(prefix: str, version: str, dest: Path) -> Path:
    """Copy every file of version `version` into `dest/<version>/` (node-local storage), each checked
    against the sha256 its manifest records, the manifest last; returns that folder for Triton's
    `--model-repository`. For repositories Triton should not stream from the bucket (the llmapi checkpoint).
    Each file is read whole: the largest file must fit the container's memory."""
    checked = check_version(prefix, version)
    target = dest / checked.version
    partial = dest / f".{checked.version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for name, info in sorted(checked.manifest["files"].items()):
        uri = checked.location.uri(VERSIONS, checked.version, name)
        data = _read(checked.store, version_key(checked.location, checked.version, name), uri)
        if data is None:
            raise LocatorError(f"{uri} is missing; upload the model again")
        if hashlib.sha256(data).hexdigest() != info.get("sha256"):
            raise LocatorError(f"{uri} differs from its manifest: refusing it; upload the model again")
        path = partial.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (partial / MANIFEST_FILE).write_bytes(checked.manifest_bytes)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def fetch_tokenizer(prefix: str, model: str, dest: Path, *, version: str) -> list[Path]:
    """Copy `model`'s tokenizer files of version `version` into `dest`, each checked against the manifest."""
    checked = check_version(prefix, version)
    subdir = engine_subdir(checked.manifest_bytes)
    contents: dict[str, bytes] = {}
    for name in TOKENIZER_FILES:
        relative = "/".join((*engine_parts(model, subdir), name))
        uri = checked.location.uri(VERSIONS, checked.version, relative)
        recorded = checked.manifest["files"].get(relative)
        if not isinstance(recorded, dict):
            raise LocatorError(f"{uri} is not part of version {checked.version}; rebuild and upload again")
        data = _read(checked.store, version_key(checked.location, checked.version, relative), uri)
        if data is None:
            raise LocatorError(f"{uri} is missing; rebuild the repository and upload it again")
        if hashlib.sha256(data).hexdigest() != recorded.get("sha256"):
            raise LocatorError(f"{uri} differs from its manifest: refusing it; upload the model again")
        contents[name] = data
    dest.mkdir(parents=True, exist_ok=True)  # only once every file passed: all of them or none
    for name, data in contents.items():
        (dest / name).write_bytes(data)
    return [dest / name for name in contents]


def _current_version(store: ObjectStore, location: StorageUri, prefix: str) -> tuple[str, str]:
    """The version CURRENT names and the content hash it records, refused unless it points inside
    `PREFIX/versions/`."""
    pointer = read_pointer(store, location)
    if not pointer or "version" not in pointer:
        raise LocatorError(
            f"no model has been uploaded to {prefix} yet: run `tritonform model upload --stack <stack>`"
        )
    version = check_version_id(str(pointer["version"]))  # an id cannot climb out of versions/
    if pointer.get("repository") != location.uri(VERSIONS, version):
        raise LocatorError(
            f"{location.uri(POINTER)} points to {pointer.get('repository')!r}, not to "
            f"{location.uri(VERSIONS, version)}: refusing it; upload the model again"
        )
    return version, str(pointer.get("content_sha256"))


def _read(store: ObjectStore, key: str, uri: str) -> bytes | None:
    try:
        return store.get_bytes(key)
    except Exception as exc:  # an SDK error (credentials, network) is one clear line too
        raise LocatorError(f"could not read {uri}: {type(exc).__name__}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.model_locator", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    version_help = "the version to serve (tritonform:triton.modelVersion), or `current` (tools only)"
    resolve = commands.add_parser("resolve", help="check a version, write its URI to a file")
    resolve.add_argument("--prefix", required=True, help="the upload prefix, e.g. s3://BUCKET/models")
    resolve.add_argument("--version", required=True, help=version_help)
    resolve.add_argument("--out", required=True, type=Path, help="file to write the URI to")
    sync = commands.add_parser("sync", help="check a version, copy all of it to local storage")
    sync.add_argument("--prefix", required=True, help="the upload prefix, e.g. s3://BUCKET/models")
    sync.add_argument("--version", required=True, help=version_help)
    sync.add_argument("--dest", required=True, type=Path, help="local folder to copy the version into")
    sync.add_argument("--out", required=True, type=Path, help="file to write the local folder's path to")
    tokenizer = commands.add_parser("tokenizer", help="check a version, copy its tokenizer files")
    tokenizer.add_argument("--prefix", required=True, help="the upload prefix, e.g. s3://BUCKET/models")
    tokenizer.add_argument("--version", required=True, help=version_help)
    tokenizer.add_argument("--model", default="llm", help="model name in the repository (default llm)")
    tokenizer.add_argument("--dest", required=True, type=Path, help="folder to copy the files into")
    args = parser.parse_args(argv)
    try:
        if args.command == "resolve":
            uri = version_repository(args.prefix, args.version)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(uri)
            print(f"serving {uri}")
        elif args.command == "sync":
            folder = sync_version(args.prefix, args.version, args.dest)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(str(folder))
            print(f"serving {folder}")
        else:
            for path in fetch_tokenizer(args.prefix, args.model, args.dest, version=args.version):
                print(f"copied {path}")
    except LocatorError as exc:
        print(f"model locator: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a malformed manifest or an SDK error: still one line, not a traceback
        print(f"model locator: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
