"""After the cloud layer everything is cloud-neutral: no code outside the cloud classes asks the cloud."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLOUD_NAMES = {"aws", "gcp", "azure"}
# Only these may know cloud names: the cloud classes, their catalogue, settings (and the stack files `init`
# writes), docs and offline mocks.
ALLOWED = {
    "infra/platform",
    "infra/catalog.py",
    "infra/settings/stack.py",
    "infra/settings/doc.py",
    "infra/settings/new_stack.py",
    "tritonform/commands/init.py",
    "infra/offline/plan.py",
    "infra/offline/mocks",
    "infra/policies",
    "model_repo/upload.py",
}


def _neutral_files() -> list[Path]:
    files = []
    for folder in ("infra", "serving", "model_repo", "tritonform"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if not any(rel == a or rel.startswith(a + "/") for a in ALLOWED):
                files.append(path)
    return files


def _cloud_branches(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            parts += [e for p in parts if isinstance(p, ast.Tuple | ast.List | ast.Set) for e in p.elts]
            names = {p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str)}
            attrs = {p.attr for p in parts if isinstance(p, ast.Attribute)}
            if names & CLOUD_NAMES or "cloud" in attrs:
                found.append(f"{path.relative_to(root)}:{node.lineno}")
        if isinstance(node, ast.Match):
            found.append(f"{path.relative_to(root)}:{node.lineno} (match)")
    return found


def test_no_code_outside_the_cloud_classes_branches_on_the_cloud_name() -> None:
    offenders = [hit for path in _neutral_files() for hit in _cloud_branches(path)]
    assert offenders == [], "move per-cloud differences into infra/platform/<cloud>/: " + ", ".join(offenders)


def test_the_check_itself_catches_branches(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text(
        "def f(s, name):\n"
        "    if s.cloud == 'aws':\n        return 1\n"
        "    if name in ('gcp',):\n        return 2\n"
        "    return 'azure' != name\n"
    )
    assert _cloud_branches(sample, tmp_path) == ["x.py:2", "x.py:4", "x.py:6"]
