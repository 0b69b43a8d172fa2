"""The cloud packages keep one shape: the same file names for the same parts, each part's entry points in the
file of its name, and a platform class with no state of its own.

Import circles are held for the whole tree by tests/test_architecture.py."""

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
