"""Kubernetes manifests from an offline plan, validated strictly against the cluster version's schemas.

Every `kubernetes:*` resource the program registers becomes one YAML document, exactly as the program
passed it (wire names are Kubernetes field names). Helm releases are listed separately: Helm renders
them on the cluster. Custom resources (e.g. the Gateway API on GKE) have no schema in the Kubernetes
set; they are written and reported as not schema-checked rather than silently passed.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.offline.plan import SECRET, Plan, PlannedResource

MARKER = ".tritonform-render"
_SKIP_PREFIXES = ("kubernetes:helm.sh/", "kubernetes:yaml")


class ManifestError(ValueError):
    """A manifest does not validate; the message names the object and the field."""


@dataclass
class Rendered:
    """What `render` wrote."""

    files: list[Path] = field(default_factory=list)
    helm_releases: list[dict[str, Any]] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # custom resources without a schema


def api_version_kind(type_token: str) -> tuple[str, str]:
    """`kubernetes:apps/v1:Deployment` -> ("apps/v1", "Deployment"); the core group has no prefix."""
    _, group_version, kind = type_token.split(":")
    group, _, version = group_version.rpartition("/")
    return (version if group == "core" else f"{group}/{version}"), kind


def manifest(resource: PlannedResource) -> dict[str, Any]:
    """One Kubernetes object as the program declared it."""
    api_version, kind = api_version_kind(resource.type)
    body = {k: v for k, v in resource.inputs.items() if k not in ("apiVersion", "kind")}
    metadata = dict(body.pop("metadata", {}) or {})
    metadata.setdefault("name", resource.name)
    for key in ("data", "stringData"):
        # A Secret's whole payload arrives as one secret value: keep the shape, never the content.
        if kind == "Secret" and body.get(key) == SECRET:
            body[key] = {"redacted": SECRET}
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


def kubernetes_resources(plan: Plan) -> list[PlannedResource]:
    return [
        r
        for r in plan.resources
        if r.type.startswith("kubernetes:") and not r.type.startswith(_SKIP_PREFIXES)
    ]


def validate(doc: dict[str, Any], kubernetes_version: str) -> bool:
    """Strict schema validation; False when the kind has no schema (a custom resource)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, f"{kubernetes_version}.0", strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(document)"
        name = f"{doc['kind']} {doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}".replace(
            " /", " "
        )
        raise ManifestError(f"{name}: field {where}: {exc.message}") from None
    return True


_FIRST_KINDS = ("Namespace", "ServiceAccount", "Secret", "ConfigMap")


def _apply_order(doc: dict[str, Any]) -> tuple[int, str, str, str]:
    """Namespaces and what pods mount first, then everything else by kind; stable across runs."""
    kind = doc["kind"]
    rank = _FIRST_KINDS.index(kind) if kind in _FIRST_KINDS else len(_FIRST_KINDS)
    return rank, kind, doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def holds_other_files(folder: Path, markers: tuple[str, ...]) -> bool:
    """Whether `folder` is a folder with files in it that holds none of `markers` (the names an earlier
    output of the command writes): a folder of the user's, which a command must not write into."""
    return folder.is_dir() and any(folder.iterdir()) and not any((folder / m).exists() for m in markers)


def _check_replaceable(out_dir: Path) -> None:
    """Only an empty folder or an earlier render is replaced; never anything else."""
    if (out_dir.exists() and not out_dir.is_dir()) or holds_other_files(out_dir, (MARKER,)):
        raise ManifestError(
            f"{out_dir} exists and is not an earlier render; choose a new or empty folder for --out"
        )


def _file_name(index: int, doc: dict[str, Any]) -> str:
    meta = doc["metadata"]
    parts = [f"{index:03d}", doc["kind"].lower(), meta.get("namespace") or "cluster", meta["name"]]
    return re.sub(r"[^a-z0-9.-]+", "-", "-".join(parts).lower()) + ".yaml"


def render(plan: Plan, out_dir: Path) -> Rendered:
    """Validate every object, then write them (all or nothing) to `out_dir`, replacing what was there."""
    version = plan.settings.cluster.kubernetes_version
    result = Rendered()
    docs = sorted((manifest(r) for r in kubernetes_resources(plan)), key=_apply_order)
    for doc in docs:
        if not validate(doc, version):
            result.unchecked.append(f"{doc['apiVersion']}/{doc['kind']} {doc['metadata']['name']}")
    result.helm_releases = [
        {
            "name": r.inputs.get("name", r.name),
            **{k: r.inputs.get(k) for k in ("chart", "version", "namespace")},
        }
        for r in plan.resources
        if r.type == "kubernetes:helm.sh/v3:Release"
    ]
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for index, doc in enumerate(docs):
            path = staging / _file_name(index, doc)
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            result.files.append(out_dir / path.name)
        (staging / MARKER).write_text(
            "written by `tritonform render`; the next render replaces this folder\n"
        )
        (staging / "helm-releases.yaml").write_text(yaml.safe_dump(result.helm_releases, sort_keys=False))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
