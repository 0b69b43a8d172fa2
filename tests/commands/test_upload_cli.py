"""`tritonform model upload`: to the S3 emulator, option errors, the destination from a stack's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repo.upload import UploadError
from tests.model_repo.test_upload import s3_endpoint, small_repo  # noqa: F401 - fixtures
from tritonform.commands.upload import register_upload, resolve_stack_uri

pytestmark = pytest.mark.timeout(180)


def test_cli_upload_and_option_errors(s3_endpoint: str, small_repo: Path) -> None:  # noqa: F811
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    model_app = typer.Typer()
    register_upload(model_app)
    app.add_typer(model_app, name="model")
    runner = CliRunner()
    done = runner.invoke(app, ["model", "upload", str(small_repo), "--to", f"s3://{s3_endpoint}/models/cli"])
    assert done.exit_code == 0, done.output
    assert f"s3://{s3_endpoint}/models/cli/versions/" in done.output
    assert runner.invoke(app, ["model", "upload", str(small_repo)]).exit_code == 2
    missing = runner.invoke(
        app, ["model", "upload", str(small_repo), "--to", f"s3://{s3_endpoint}/nobucket/x"]
    )
    assert missing.exit_code == 1 and "Traceback" not in missing.output


def test_stack_uri_from_pulumi_outputs() -> None:
    class Done:
        returncode, stderr = 0, ""
        stdout = json.dumps({"model_repository_uri": "s3://bucket/models", "bucket_uri": "s3://bucket"})

    assert resolve_stack_uri("aws-dev", run=lambda *a, **k: Done()) == "s3://bucket/models"
    Done.stdout = "{}"
    with pytest.raises(UploadError, match="has no output"):
        resolve_stack_uri("aws-dev", run=lambda *a, **k: Done())
