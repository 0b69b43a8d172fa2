"""checkov (Kubernetes framework) on what `tritonform render` writes for every stack: no failed check.

A check that does not fit this design would be skipped in the manifest itself with a `checkov.io/skip`
annotation that names why; none is needed today.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.infra.conftest import STACK_FILES, with_model_version
from tritonform.cli import app

pytestmark = pytest.mark.timeout(600)


def _checkov() -> str:
    found = shutil.which("checkov")
    if found is None:
        pytest.fail("checkov is not installed: scripts/bootstrap installs it into its own cached environment")
    return found


def test_no_stack_fails_a_checkov_kubernetes_check(tmp_path: Path) -> None:
    runner = CliRunner()
    stacks, manifests = tmp_path / "stacks", tmp_path / "manifests"
    stacks.mkdir()
    for path in STACK_FILES:
        stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
        source = with_model_version(stack, stacks)  # both servers in the manifests
        result = runner.invoke(app, ["render", "--stack-file", str(source), "--out", str(manifests / stack)])
        assert result.exit_code == 0, result.output
    scan = subprocess.run(
        [_checkov(), "-d", str(manifests), "--framework", "kubernetes", "--output", "json", "--quiet",
         "--skip-download", "--compact"],
        capture_output=True, text=True, timeout=540, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )  # fmt: skip
    report = json.loads(scan.stdout)
    assert report["summary"]["resource_count"] >= 6 * 15, report["summary"]
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']})"
        for check in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert report["summary"]["passed"] > 0
