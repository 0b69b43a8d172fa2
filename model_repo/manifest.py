"""A built repository's manifest (`REPOSITORY.json`) and where its artefacts live (standard library only).

    REPOSITORY.json                  {"format": 1, "backend", "spec", ..., "content_sha256", "files"}
    <model>/1/<spec.engine_subdir>/  the engine's model directory (see model_repo/runtime/contract.py)

`model_repo.layout` writes the manifest, `model_repo.upload` reads it, and serving (the gateway's
settings, the model locator) finds the engine folder through it: one definition for all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_FILE = "REPOSITORY.json"
MANIFEST_FORMAT = 1
MODEL_VERSION = "1"  # the one version directory of every model in a repository
DEFAULT_ENGINE_SUBDIR = "engine"  # also what manifests written before `spec.engine_subdir` existed mean


class ManifestError(ValueError):
    """A directory is not a built tritonform repository; the message says which."""


def file_digest(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(repository: Path, info: dict[str, Any]) -> Path:
    """Write `REPOSITORY.json`: `info` plus size and sha256 of every file (sorted, POSIX paths).

    `content_sha256` hashes the file list, so two identical repositories have the same value.
    """
    files = {
        path.relative_to(repository).as_posix(): {"size": path.stat().st_size, "sha256": file_digest(path)}
        for path in sorted(repository.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }
    manifest = {"format": MANIFEST_FORMAT, **info, "content_sha256": content_digest(files), "files": files}
    target = repository / MANIFEST_FILE
    target.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def content_digest(files: dict[str, Any]) -> str:
    """A manifest's `content_sha256`: the sha256 of its file list (names, sizes, sha256s), so two
    identical repositories have the same value and a manifest whose list was edited no longer matches."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def read_manifest(repository: Path) -> dict[str, Any]:
    """The manifest of a built repository; `ManifestError` if it is not one."""
    path = Path(repository) / MANIFEST_FILE
    with contextlib.suppress(FileNotFoundError):
        return parse_manifest(path.read_bytes(), str(repository))
    raise ManifestError(f"{repository} is not a built tritonform repository (no valid {MANIFEST_FILE})")


def parse_manifest(raw: bytes, source: str) -> dict[str, Any]:
    """A manifest from its bytes; `ManifestError` naming `source` if they are not one."""
    with contextlib.suppress(ValueError):
        data = json.loads(raw)
        if isinstance(data, dict) and isinstance(data.get("files"), dict):
            return data
    raise ManifestError(f"{source} is not a built tritonform repository (no valid {MANIFEST_FILE})")


def engine_subdir(manifest: str | bytes | None) -> str:
    """Where a repository keeps its artefacts (tokenizer, ONNX), from its manifest's text;
    `DEFAULT_ENGINE_SUBDIR` when the manifest is absent or does not say."""
    try:
        return str(json.loads(manifest or "")["spec"]["engine_subdir"])
    except (ValueError, KeyError, TypeError):
        return DEFAULT_ENGINE_SUBDIR


def engine_parts(model_name: str, subdir: str) -> tuple[str, str, str]:
    """The engine folder of `model_name`, as path parts relative to the repository's root."""
    return (model_name, MODEL_VERSION, subdir)


def engine_dir(repository: Path, model_name: str) -> Path:
    """The engine folder of `model_name` in a local repository (found through its manifest)."""
    try:
        manifest: bytes | None = (Path(repository) / MANIFEST_FILE).read_bytes()
    except OSError:
        manifest = None
    return Path(repository).joinpath(*engine_parts(model_name, engine_subdir(manifest)))
