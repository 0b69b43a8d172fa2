"""`tritonform init`: a stack file with the user's own values that plans clean; bad input writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.catalog import KUBERNETES_CALENDAR_CHECKED
from tritonform.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
ANSWERS = ["--admin-cidr", "198.18.7.9/32", "--client-cidr", "100.64.0.0/10"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (Pulumi.yaml + the example stacks) as the working directory."""
    shutil.copy2(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tritonform.commands.init.today", lambda: KUBERNETES_CALENDAR_CHECKED)
    monkeypatch.setattr("tritonform.commands.infra.today", lambda: KUBERNETES_CALENDAR_CHECKED)
    return tmp_path


@pytest.mark.parametrize(
    ("cloud", "extra"),
    [("aws", []), ("gcp", ["--gcp-project", "acme-ml-serving"]), ("azure", ["--apim-email", "ml@acme.dev"])],
)
@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_init_writes_a_stack_that_plans_clean(
    project: Path, cloud: str, extra: list[str], environment: str
) -> None:
    stack = f"mine-{cloud}-{environment}"
    result = runner.invoke(
        app, ["init", "--cloud", cloud, "--stack", stack, "-e", environment, *ANSWERS, *extra]
    )
    assert result.exit_code == 0, result.output
    written = project / "stacks" / f"Pulumi.{stack}.yaml"
    config = yaml.safe_load(written.read_text())["config"]
    assert config["tritonform:allowedClientCidrs"] == ["100.64.0.0/10"]
    assert "tritonform:tags" not in config and "kmsKey" not in config["tritonform:bucket"]
    assert f"tritonform plan --stack {stack}" in result.stdout
    planned = runner.invoke(app, ["plan", "--stack", stack])
    assert planned.exit_code == 0, planned.output
    assert "warning" not in planned.stdout


def test_a_missing_answer_without_a_terminal_is_one_clear_error(project: Path) -> None:
    result = runner.invoke(app, ["init", "--cloud", "aws", "--stack", "mine"], input="")
    assert result.exit_code == 2
    assert "--admin-cidr is required" in result.stderr and "Traceback" not in result.output
    assert not (project / "stacks" / "Pulumi.mine.yaml").exists()


def test_a_bad_value_names_the_key_and_writes_nothing(project: Path) -> None:
    result = runner.invoke(
        app, ["init", "--cloud", "aws", "--stack", "mine", "--admin-cidr", "10.0.0.300/32"]
    )
    assert result.exit_code == 2
    assert "nothing written" in result.stderr and "tritonform:cluster.endpointAllowedCidrs" in result.stderr
    assert not (project / "stacks" / "Pulumi.mine.yaml").exists()


def test_documentation_ranges_are_refused_from_init_too(project: Path) -> None:
    result = runner.invoke(
        app, ["init", "--cloud", "aws", "--stack", "mine", "--admin-cidr", "203.0.113.5/32"]
    )
    assert result.exit_code == 2 and "documentation-only range" in result.stderr


def test_an_existing_stack_is_kept_unless_forced(project: Path) -> None:
    target = project / "stacks" / "Pulumi.aws-dev.yaml"
    before = target.read_text()
    result = runner.invoke(app, ["init", "--cloud", "aws", "--stack", "aws-dev", *ANSWERS])
    assert result.exit_code == 2 and "exists already" in result.stderr and target.read_text() == before
    forced = runner.invoke(app, ["init", "--cloud", "aws", "--stack", "aws-dev", *ANSWERS, "--force"])
    assert forced.exit_code == 0 and target.read_text() != before


def test_a_zonal_gcp_stack_in_another_region_needs_its_zone(project: Path) -> None:
    base = ["init", "--cloud", "gcp", "--stack", "eu", *ANSWERS, "--gcp-project", "acme-ml-serving"]
    result = runner.invoke(app, [*base, "--region", "europe-west4"])
    assert result.exit_code == 2 and "gcp.zone: us-central1-a is not in region europe-west4" in result.stderr
    assert (
        runner.invoke(app, [*base, "--region", "europe-west4", "--gcp-zone", "europe-west4-b"]).exit_code == 0
    )
