"""`scripts/bootstrap`: every checkout runs its own code, though the dependencies are shared.

Two checkouts (clones, worktrees, a CI clone beside a working copy) share the cached dependency
environment, keyed by content; before, the second bootstrap re-pointed the shared editable install at
itself and the first checkout then ran the second one's code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _checkout(where: Path, marker: str) -> Path:
    """A minimal checkout: the real bootstrap, pyproject and lock file (so the shared environment this
    run uses is reused, not rebuilt), and a `tritonform` package that says which checkout it is."""
    (where / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "bootstrap", where / "scripts" / "bootstrap")
    for name in ("pyproject.toml", "requirements.lock", "README.md"):
        shutil.copy2(ROOT / name, where / name)
    (where / "tritonform").mkdir()
    (where / "tritonform" / "__init__.py").write_text(f"CHECKOUT = {marker!r}\n")
    (where / "tritonform" / "cli.py").write_text(
        "def main() -> None:\n    import tritonform\n    print('cli', tritonform.CHECKOUT)\n"
    )
    return where


def _run(checkout: Path, *command: str) -> str:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        [str(checkout / "scripts" / "bootstrap"), *command],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_two_checkouts_each_run_their_own_code(tmp_path: Path) -> None:
    first = _checkout(tmp_path / "first", "first")
    second = _checkout(tmp_path / "second", "second")
    probe = ("python", "-c", "import tritonform; print(tritonform.CHECKOUT)")

    assert _run(first, *probe) == "first"
    assert _run(second, *probe) == "second"
    # The first checkout is not re-pointed by the second one's bootstrap.
    assert _run(first, *probe) == "first"
    assert _run(first, "tritonform") == "cli first"
    assert _run(second, "tritonform") == "cli second"
    # Pulumi runs the program with ./.venv/bin/python directly, without the bootstrap.
    probe_code = "import tritonform, yaml; print(tritonform.CHECKOUT)"
    direct = subprocess.run(
        [str(first / ".venv" / "bin" / "python"), "-c", probe_code],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert direct.stdout.strip() == "first"
