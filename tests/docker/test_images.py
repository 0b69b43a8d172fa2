"""Each image holds exactly the modules its entry points import (issue 13): the gateway image's files
(docker/gateway/Dockerfile's COPY lines) are copied into an empty folder and every entry point the
cluster runs is imported from there alone; the Triton image carries nothing of the project, so a built
model repository must hold everything its model.py imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.test_architecture import imports_of

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_DOCKERFILE = ROOT / "docker" / "gateway" / "Dockerfile"
OURS = ("serving", "model_repo")
# What the gateway image runs: the server (`python -m serving.gateway`), the model locator (its init
# container), and the shared limits module the server imports when the stack gives it a store.
GATEWAY_ENTRY_POINTS = (
    "serving.gateway.__main__",
    "serving.model_locator",
    "serving.gateway.shared_limits",
    "serving.gateway.canary_store",
)


def copy_image_files(dockerfile: Path, into: Path, drop_line: int | None = None) -> Path:
    """Copy what the Dockerfile's `COPY ... /app...` lines copy into `into` (one line left out if asked)."""
    for number, line in enumerate(dockerfile.read_text().splitlines()):
        words = line.split()
        if words[:1] != ["COPY"] or not words[-1].startswith("/app") or number == drop_line:
            continue
        target = into / words[-1].removeprefix("/app").strip("/")
        for source in words[1:-1]:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target / Path(source).name)
    return into


def missing_modules(app: Path) -> list[str]:
    """Imports of our own modules (at any depth, in functions too) that the copy lacks."""
    missing = []
    for path in sorted(app.rglob("*.py")):
        for found in imports_of(path, app):
            if found.imported.split(".")[0] not in OURS:
                continue
            target = app / Path(*found.imported.split("."))
            if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
                missing.append(str(found))
    return missing


def imported_from_image(app: Path, entry_points: Sequence[str], packages: Sequence[str]) -> int:
    """Import `entry_points` in a fresh interpreter run in the image's copied files `app`; fails unless
    every module of `packages` it loaded came from `app`. Returns how many such modules it loaded."""
    script = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {list(entry_points)!r}:
            importlib.import_module(name)
        ours = [m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] in {list(packages)!r}]
        outside = [f for f in ours if not (f or "").startswith({str(app)!r})]
        assert not outside, outside
        print(len(ours))
        """
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, cwd=app, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_the_gateway_image_holds_every_module_its_code_imports(tmp_path: Path) -> None:
    app = copy_image_files(GATEWAY_DOCKERFILE, tmp_path / "app")
    assert missing_modules(app) == []


def test_the_gateway_images_entry_points_import_from_its_files_alone(tmp_path: Path) -> None:
    app = copy_image_files(GATEWAY_DOCKERFILE, tmp_path / "app")
    assert imported_from_image(app, GATEWAY_ENTRY_POINTS, OURS) >= 10


def test_the_check_notices_a_removed_copy_line(tmp_path: Path) -> None:
    lines = GATEWAY_DOCKERFILE.read_text().splitlines()
    copies = [n for n, line in enumerate(lines) if line.startswith("COPY model_repo/")]
    assert copies
    for number in copies:
        app = copy_image_files(GATEWAY_DOCKERFILE, tmp_path / f"without-{number}", drop_line=number)
        assert missing_modules(app), f"dropping {lines[number]!r} went unnoticed"


@pytest.mark.slow
def test_a_built_repository_holds_everything_its_model_py_imports(tiny_repository: Path) -> None:
    """Triton loads `<model>/1/model.py` by path; it and the runtime package beside it must import
    without the project installed (the Triton image has numpy, onnxruntime, tokenizers and llguidance
    only), and the runtime's grammar compiler works there."""
    version_dir = tiny_repository / "llm" / "1"
    runtime = sorted(
        p.stem for p in (version_dir / "tritonform_runtime").glob("*.py") if p.stem != "__init__"
    )
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("model", "model.py")
        model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(model)
        for name in {runtime!r}:
            model.runtime_module(name)
        # guided decoding: llguidance must be importable where the runtime runs (docker/triton pins it)
        import json
        from tokenizers import Tokenizer
        meta = json.load(open("engine/generation.json"))
        tokenizer = Tokenizer.from_file("engine/tokenizer.json")
        compiler = model.runtime_module("guide").GuideCompiler
        guides = compiler(tokenizer, meta["vocab_size"], meta["eos_token_ids"])
        assert guides.grammar("json", "")
        leaked = sorted(n for n in sys.modules if n.split(".")[0] in {OURS!r})
        assert not leaked, leaked
        print(model.runtime_module("engine").__file__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=version_dir, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(version_dir / "tritonform_runtime"))
