"""The image build context leaves out every large local output (the README builds models into build/) and
nothing a Dockerfile copies."""

from __future__ import annotations

import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Folders that tritonform, the README's commands and the dev tools write in a checkout.
LOCAL_OUTPUTS = ("build", "dist", "out", ".cache", ".whl", ".gl", ".venv", ".mypy_cache", ".pytest_cache")


def _patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().strip("/") for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in _patterns())


def test_local_outputs_stay_out_of_the_build_context() -> None:
    missing = [folder for folder in LOCAL_OUTPUTS if not _ignored(folder)]
    assert missing == [], f"add these to .dockerignore: {missing}"


def test_nothing_a_dockerfile_copies_is_ignored() -> None:
    for dockerfile in sorted((ROOT / "docker").glob("*/Dockerfile")):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    parts = Path(source).parts
                    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
                    assert not any(_ignored(p) for p in prefixes), f"{dockerfile}: {source} is ignored"
