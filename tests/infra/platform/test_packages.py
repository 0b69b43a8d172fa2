"""The cloud packages keep one shape: the same file names for the same parts, each part's entry points in the
file of its name, a platform class with no state of its own, and no import circle through infra/platform/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from infra.catalog import CLOUDS

ROOT = Path(__file__).resolve().parents[3]
PLATFORM = ROOT / "infra" / "platform"
# Every part a cloud package may have, and the entry points that build it: the same file name and the
# same function names on every cloud.
PARTS: dict[str, tuple[str, ...]] = {
    "provider": ("cloud_context",),
    "network": ("build_network",),
    "cluster": ("build_cluster", "build_gpu_pool"),
    "storage": ("build_bucket",),
    "identity": ("build_reader",),
    "registry": ("build_registry",),
    "edge": ("build_edge", "gateway_exposure"),
    "addons": ("install_gpu_addons",),
    "services": ("enable_services",),
    "logging": ("build_logging",),
}
# Only clouds whose GPU nodes need something installed have add-ons (GKE installs everything itself).
# Only clouds whose APIs must be switched on per project have services (GCP).
# Logging: the cloud's data-access and control-plane logs where the cloud does not keep them by default.
OPTIONAL_PARTS = {"addons", "services", "logging"}
NEUTRAL_MODULES = {"__init__", "base", "kubeconfigs"}


def _modules(cloud: str) -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in sorted((PLATFORM / cloud).glob("*.py"))}


def _top_level_functions(tree: ast.Module) -> set[str]:
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_each_cloud_is_a_package_and_no_cloud_module_is_left_beside_them() -> None:
    assert all((PLATFORM / cloud / "__init__.py").is_file() for cloud in CLOUDS)
    flat = {path.stem for path in PLATFORM.glob("*.py")} - NEUTRAL_MODULES
    assert flat == set(), f"move these into their cloud's package: {sorted(flat)}"
    folders = {path.name for path in PLATFORM.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders == set(CLOUDS)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_cloud_packages_use_the_same_file_names_for_the_same_parts(cloud: str) -> None:
    parts = set(_modules(cloud)) - {"__init__"}
    unknown = parts - set(PARTS)
    assert unknown == set(), f"{cloud}: name these after the part they build ({', '.join(PARTS)})"
    missing = set(PARTS) - OPTIONAL_PARTS - parts
    assert missing == set(), f"{cloud} lacks {sorted(missing)}"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_each_part_is_built_in_the_file_of_its_name_only(cloud: str) -> None:
    owner = {entry: part for part, entries in PARTS.items() for entry in entries}
    for module, tree in _modules(cloud).items():
        defined = _top_level_functions(tree)
        if module in PARTS:
            assert set(PARTS[module]) <= defined, f"{cloud}/{module}.py must define {PARTS[module]}"
        strays = {entry for entry in defined & set(owner) if owner[entry] != module}
        assert strays == set(), f"{cloud}/{module}.py builds another part: {sorted(strays)}"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_package_init_holds_only_the_platform_class(cloud: str) -> None:
    tree = _modules(cloud)["__init__"]
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert len(classes) == 1 and classes[0].name.endswith("Platform")
    assert not [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.Assign)]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_no_state_is_kept_in_self(cloud: str) -> None:
    stores = [
        f"{cloud}/{module}.py:{node.lineno}"
        for module, tree in _modules(cloud).items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    ]
    assert stores == [], "steps hand each other typed values, not attributes of self: " + ", ".join(stores)


# -- import circles ------------------------------------------------------------------------------
def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the tree under `root`, by dotted name (a package by its own name)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(
    node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]
) -> set[str]:
    """The modules an import statement names: `import a.b`: a.b; `from a import b`: a.b if that is a
    module, else a (whose `b` it reads)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:
        anchor = importer.split(".") if is_package else importer.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Which modules of the tree each module imports: at module level, inside functions and under
    `if TYPE_CHECKING:` alike. Importing `a.b.c` also runs `a` and `a.b`, so those count too, unless the
    importer lives in them (then they are already initialised)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own_packages = {".".join(name.split(".")[:depth]) for depth in range(1, name.count(".") + 1)}
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for wanted in _imported(node, name, path.name == "__init__.py", set(modules)) & set(modules):
                parts = wanted.split(".")
                parents = {".".join(parts[:depth]) for depth in range(1, len(parts))} & set(modules)
                targets |= {wanted} | (parents - own_packages - {name})
        graph[name] = targets - {name}
    return graph


def circles_through(graph: dict[str, set[str]], prefix: str) -> list[list[str]]:
    """One import circle for each module under `prefix` that is part of one (the path back to itself)."""
    found = []
    for start in sorted(name for name in graph if name == prefix or name.startswith(prefix + ".")):
        paths: dict[str, list[str]] = {start: [start]}
        queue = [start]
        while queue:
            current = queue.pop(0)
            for target in sorted(graph.get(current, ())):
                if target == start:
                    found.append([*paths[current], start])
                    queue = []
                    break
                if target not in paths:
                    paths[target] = [*paths[current], target]
                    queue.append(target)
    return found


def test_no_module_of_infra_platform_is_part_of_an_import_circle() -> None:
    circles = circles_through(import_graph(ROOT / "infra", "infra"), "infra.platform")
    assert circles == [], "\n".join(" -> ".join(circle) for circle in circles)


def test_the_check_finds_circles_hidden_in_functions_and_type_checking(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "cloud").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text("X = 1\n")
    (package / "cloud" / "__init__.py").write_text("from pkg.cloud.edge import edge\n\nclass Cloud: ...\n")
    (package / "cloud" / "edge.py").write_text(
        "from typing import TYPE_CHECKING\n\nfrom pkg import base\n\n"
        "if TYPE_CHECKING:\n    from pkg.cloud import Cloud\n\n"
        "def edge(cloud: 'Cloud') -> None:\n    from .network import vpc\n"
    )
    (package / "cloud" / "network.py").write_text("def vpc() -> None:\n    from pkg.cloud import edge\n")
    (package / "cloud" / "storage.py").write_text(
        "from pkg.base import X\nfrom pkg.cloud.network import vpc\n"
    )

    graph = import_graph(package, "pkg")
    assert graph["pkg.cloud.edge"] == {"pkg.base", "pkg.cloud", "pkg.cloud.network"}
    assert graph["pkg.cloud.storage"] == {"pkg.cloud.network", "pkg.base"}
    circles = circles_through(graph, "pkg")
    assert {circle[0] for circle in circles} == {"pkg.cloud", "pkg.cloud.edge", "pkg.cloud.network"}
    assert ["pkg.cloud.edge", "pkg.cloud", "pkg.cloud.edge"] in circles
