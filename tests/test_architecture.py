"""The layer rules of ARCHITECTURE.md, held over the whole source tree.

- the workload imports no cloud package (neither ours nor a cloud SDK); cloud packages import nothing
  from the workload;
- `serving/` imports nothing from `infra/` or the CLI; `model_repo/` nothing from `infra/`, `serving/` or
  the CLI; `infra/` nothing from the CLI (`tritonform/` composes the layers, nothing imports it);
- `model_repo/training/` (fine-tune, prune, distil, evaluate) sits on top of the build layer: nothing else
  in `model_repo/` imports it;
- `model_repo/runtime/`, which every model repository ships into Triton's python backend, imports only
  the runtime libraries (numpy, onnxruntime, onnx, tokenizers, llguidance) and the standard library;
- no import circle anywhere (imports inside functions and under `if TYPE_CHECKING:` count too: a circle
  hidden there is still a circle a reader has to untangle);
- importing a module creates no cloud resource and exports nothing (only `infra/__main__.py`, the
  program itself, does).

Each rule is also run against a small tree that breaks it, so the checks are known to catch what they
are for.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("infra", "model_repo", "serving", "tritonform")
CLOUD_PACKAGES = ("infra.platform.aws", "infra.platform.gcp", "infra.platform.azure")
CLOUD_SDKS = ("pulumi_aws", "pulumi_gcp", "pulumi_azure_native")
RUNTIME = "model_repo.runtime"
# Before the checkpoint (issue 17): fine-tune, prune, distil, evaluate. It sits on top of the build layer
# (it may use checkpoint loading, storage), and the build never depends on it.
TRAINING = "model_repo.training"
# What the runtime package may import besides itself and the standard library: what Triton's python
# backend environment offers in every image (ENVIRONMENT.md, docker/triton). llguidance (issue 15): the
# engine enforces structured output and tool-call grammars with a token mask each step, per sequence,
# inside the continuous batch; a maintained grammar library does that in ~0.1 ms a token, no hand-written
# substitute could, and it has no dependencies. docker/triton/requirements.txt pins it (tests/docker).
# onnx: the graph rewrite that puts tritonform's CPU operators in place of the 4-bit projections' nodes
# at load (runtime/q4_fusion.py; imported only on the CPU provider with the operators' library named).
RUNTIME_LIBRARIES = (
    "numpy",
    "onnxruntime",
    "onnx",
    "tokenizers",
    "llguidance",
    "jinja2",
    "triton_python_backend_utils",
)


@dataclass(frozen=True)
class Import:
    """One import statement: who imports what, where."""

    importer: str
    imported: str
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.imported}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> Iterator[Path]:
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if ".venv" not in path.parts:
                yield path


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every import in a file, relative ones resolved, `from pkg import mod` resolved to the module."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, where)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                # `from infra.platform import aws` imports the module infra.platform.aws.
                is_module = (root / Path(*candidate.split("."))).is_dir() or (
                    root / Path(*candidate.split("."))
                ).with_suffix(".py").is_file()
                yield Import(name, candidate if is_module else base, where)


def all_imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    return [found for path in source_files(root, packages) for found in imports_of(path, root)]


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def layer_violations(imports: list[Import]) -> list[str]:
    """Imports that cross a layer the wrong way (see the module docstring)."""
    rules: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
        (("infra.workload",), (*CLOUD_PACKAGES, *CLOUD_SDKS), "the workload must not know the cloud"),
        (("infra.platform",), ("infra.workload",), "clouds must not import the workload"),
        (("serving",), ("infra", "tritonform"), "serving must not import infra or the CLI"),
        (("model_repo",), ("infra", "serving", "tritonform"), "model_repo must not import layers above it"),
        (("infra",), ("tritonform",), "infra must not import the CLI"),
    ]  # fmt: skip
    found = []
    for imp in imports:
        for importers, forbidden, why in rules:
            if _within(imp.importer, importers) and _within(imp.imported, forbidden):
                found.append(f"{imp} ({why})")
        if (
            _within(imp.importer, ("model_repo",))
            and not _within(imp.importer, (TRAINING,))
            and _within(imp.imported, (TRAINING,))
        ):
            found.append(f"{imp} (the build layer must not depend on training, which sits on top of it)")
    return found


def runtime_violations(imports: list[Import]) -> list[str]:
    """Imports of the runtime package beyond itself, the standard library and the runtime libraries."""
    found = []
    for imp in imports:
        if not _within(imp.importer, (RUNTIME,)) or _within(imp.imported, (RUNTIME,)):
            continue
        top = imp.imported.split(".")[0]
        if top == "__future__" or top in sys.stdlib_module_names or top in RUNTIME_LIBRARIES:
            continue
        found.append(
            f"{imp} (the runtime ships into Triton: numpy, onnxruntime, onnx, tokenizers, llguidance, stdlib)"
        )
    return found


def import_circles(imports: list[Import], packages: tuple[str, ...] = PACKAGES) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted, over our own modules.

    An import of `a.b.c` depends on `a.b.c` only; a package's `__init__` counts as the package module.
    """
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if _within(imp.imported, packages) and imp.imported != imp.importer:
            graph.setdefault(imp.importer, set()).add(imp.imported)
            graph.setdefault(imp.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


# -- the real tree -----------------------------------------------------------------------------------


def test_layers_import_only_downwards() -> None:
    assert layer_violations(all_imports()) == []


def test_runtime_package_imports_only_runtime_libraries() -> None:
    imports = all_imports()
    assert any(_within(imp.importer, (RUNTIME,)) for imp in imports), "model_repo/runtime/ is missing"
    assert runtime_violations(imports) == []


def test_no_import_circles() -> None:
    assert import_circles(all_imports()) == []


_NO_RESOURCES_AT_IMPORT = textwrap.dedent(
    """
    import importlib, json, sys
    import pulumi
    made = []
    def refuse(self, t, name, *args, **kwargs):
        made.append(f"{t} {name}")
        raise RuntimeError("resource created at import")
    pulumi.Resource.__init__ = refuse
    pulumi.export = lambda name, value: made.append(f"export {name}")
    failed = []
    for module in sys.argv[1:]:
        try:
            importlib.import_module(module)
        except Exception as exc:
            failed.append(f"{module}: {type(exc).__name__}: {exc}")
    print(json.dumps({"made": made, "failed": failed}))
    """
)


def _importable_modules(root: Path = ROOT) -> list[str]:
    """Every module of ours but the programs (`__main__`) and the TensorRT-LLM model files, which import
    Triton's `triton_python_backend_utils` and so load only inside Triton."""
    modules = [module_name(path, root) for path in source_files(root)]
    return [m for m in modules if not m.endswith(".__main__") and ".templates." not in m]


def test_importing_any_module_creates_no_resource() -> None:
    modules = _importable_modules()
    result = subprocess.run(
        [sys.executable, "-c", _NO_RESOURCES_AT_IMPORT, *modules],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"made": [], "failed": []}


# -- the checks catch what they are for --------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"infra/workload/triton.py": "import pulumi_aws\n"}, "the workload must not know the cloud"),
        (
            {
                "infra/workload/triton.py": "from infra.platform import gcp\n",
                "infra/platform/gcp/__init__.py": "",
            },
            "the workload must not know the cloud",
        ),
        ({"infra/platform/aws/edge.py": "from infra.workload.gateway import X\n"}, "clouds must not"),
        ({"serving/app.py": "from infra.settings import StackSettings\n"}, "serving must not"),
        ({"model_repo/build.py": "def f():\n    from tritonform.cli import app\n"}, "model_repo must not"),
        (
            {"infra/workload/images.py": "from tritonform import __version__\n"},
            "infra must not import the CLI",
        ),
        (
            {
                "model_repo/build.py": "from model_repo.training import finetune\n",
                "model_repo/training/finetune.py": "from model_repo.checkpoint import cache_dir\n",
            },
            "the build layer must not depend on training",
        ),
    ],
)
def test_layer_check_catches_each_rule(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    root = _tree(tmp_path, files)
    found = layer_violations(all_imports(root))
    assert len(found) == 1 and expected in found[0], found


def test_runtime_check_catches_a_build_time_import(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "model_repo/runtime/__init__.py": "from .engine import Engine\n",
            "model_repo/runtime/engine.py": "import json\nimport numpy\nfrom . import sampling\n"
            "import torch\n",
            "model_repo/runtime/sampling.py": "from model_repo.export import x\n",
        },
    )
    found = runtime_violations(all_imports(root))
    assert len(found) == 2
    assert "imports torch" in found[0] and "imports model_repo.export" in found[1]


def test_circle_check_sees_circles_behind_type_checking_and_functions(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "infra/platform/gcp.py": "from infra.platform.gcp_edge import edge\n",
            "infra/platform/gcp_edge.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from infra.platform.gcp import GcpPlatform\n"
            ),
            "serving/a.py": "def f():\n    from serving import b\n",
            "serving/b.py": "from .a import f\n",
            "serving/c.py": "from serving.a import f\n",
        },
    )
    assert import_circles(all_imports(root)) == [
        ["infra.platform.gcp", "infra.platform.gcp_edge"],
        ["serving.a", "serving.b"],
    ]


def test_resource_check_catches_a_resource_made_at_import(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "infra/__init__.py": "",
            "infra/bucket.py": "import pulumi\npulumi.CustomResource('aws:s3/bucket:Bucket', 'models')\n",
            "infra/fine.py": "import pulumi\ndef later():\n    pulumi.export('x', 1)\n",
        },
    )
    result = subprocess.run(
        [sys.executable, "-c", _NO_RESOURCES_AT_IMPORT, "infra.bucket", "infra.fine"],
        capture_output=True, text=True, cwd=root, timeout=120, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["made"] == ["aws:s3/bucket:Bucket models"]
    assert len(report["failed"]) == 1 and report["failed"][0].startswith("infra.bucket: RuntimeError")
