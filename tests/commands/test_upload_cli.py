"""`tritonform model upload`: to the S3 emulator, option errors, the destination from a stack's outputs,
and the stack's serving version pinned (through a fake pulumi CLI) only after a successful upload."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model_repo.layout import write_repository
from model_repo.spec import GenerationSpec
from model_repo.upload import UploadError
from tests.model_repo.test_upload import s3_endpoint, small_repo  # noqa: F401 - fixtures
from tritonform.commands.upload import register_upload, resolve_stack_uri, set_version_command

pytestmark = pytest.mark.timeout(180)


def _app(run: Callable[..., Any] | None = None) -> Any:
    import typer

    app = typer.Typer()
    model_app = typer.Typer()
    if run is None:
        register_upload(model_app)
    else:
        register_upload(model_app, run=run)
    app.add_typer(model_app, name="model")
    return app


def test_cli_upload_and_option_errors(s3_endpoint: str, small_repo: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    app = _app()
    runner = CliRunner()
    done = runner.invoke(app, ["model", "upload", str(small_repo), "--to", f"s3://{s3_endpoint}/models/cli"])
    assert done.exit_code == 0, done.output
    assert f"s3://{s3_endpoint}/models/cli/versions/" in done.output
    version = _version(done.output)
    # --to names no stack: the command that pins one is printed, not run
    assert " ".join(set_version_command("STACK", version)) in done.output
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


class FakePulumi:
    """The pulumi CLI as `subprocess.run` sees it: `stack output` gives `uri`; `config set` is recorded
    (or fails as when the CLI is not installed)."""

    def __init__(self, uri: str, installed_for_config: bool = True) -> None:
        self.uri, self.installed_for_config = uri, installed_for_config
        self.config_calls: list[list[str]] = []

    def __call__(self, command: list[str], **_: Any) -> Any:
        class Done:
            returncode, stdout, stderr = 0, "", ""

        if command[1:3] == ["stack", "output"]:
            Done.stdout = json.dumps({"model_repository_uri": self.uri})
        elif command[1:3] == ["config", "set"]:
            if not self.installed_for_config:
                raise FileNotFoundError("pulumi")
            self.config_calls.append(command)
        return Done()


def _version(output: str) -> str:
    found = re.search(r"version (\d{8}T\d{6}Z-[0-9a-f]{12})", output)
    assert found, output
    return found.group(1)


def test_stack_upload_pins_the_stacks_serving_version(s3_endpoint: str, small_repo: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    pulumi = FakePulumi(f"s3://{s3_endpoint}/models/stack-pin")
    done = CliRunner().invoke(_app(pulumi), ["model", "upload", str(small_repo), "--stack", "aws-dev"])
    assert done.exit_code == 0, done.output
    version = _version(done.output)
    assert pulumi.config_calls == [
        ["pulumi", "config", "set", "--path", "--stack", "aws-dev", "tritonform:triton.modelVersion", version]
    ]
    assert "`pulumi up --stack aws-dev` rolls Triton and the gateway to it together" in done.output

    # the same content again: already current, and the stack is pinned to that version again
    again = CliRunner().invoke(_app(pulumi), ["model", "upload", str(small_repo), "--stack", "aws-dev"])
    assert again.exit_code == 0 and "Already current" in again.output
    assert pulumi.config_calls[-1][-1] == version


def test_no_set_version_leaves_the_stack_alone(s3_endpoint: str, small_repo: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    pulumi = FakePulumi(f"s3://{s3_endpoint}/models/stack-no-pin")
    args = ["model", "upload", str(small_repo), "--stack", "aws-dev", "--no-set-version"]
    done = CliRunner().invoke(_app(pulumi), args)
    assert done.exit_code == 0, done.output
    assert pulumi.config_calls == []
    assert " ".join(set_version_command("aws-dev", _version(done.output))) in done.output


def test_without_the_pulumi_cli_the_command_to_run_later_is_printed(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
) -> None:
    from typer.testing import CliRunner

    pulumi = FakePulumi(f"s3://{s3_endpoint}/models/stack-no-cli", installed_for_config=False)
    done = CliRunner().invoke(_app(pulumi), ["model", "upload", str(small_repo), "--stack", "aws-dev"])
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert "the pulumi CLI is not installed" in done.output
    command = " ".join(set_version_command("aws-dev", _version(done.output)))
    assert f"run it yourself: {command}" in done.output


def test_a_failed_or_interrupted_upload_leaves_the_stack_config_untouched(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    import model_repo.upload

    failing = FakePulumi(f"s3://{s3_endpoint}/nobucket/models")
    done = CliRunner().invoke(_app(failing), ["model", "upload", str(small_repo), "--stack", "aws-dev"])
    assert done.exit_code == 1 and failing.config_calls == []
    assert "the stack's serving version were not changed" in done.output

    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(model_repo.upload, "upload_repository", interrupted)
    pulumi = FakePulumi(f"s3://{s3_endpoint}/models/stack-interrupted")
    done = CliRunner().invoke(_app(pulumi), ["model", "upload", str(small_repo), "--stack", "aws-dev"])
    assert done.exit_code == 130 and pulumi.config_calls == []


def test_an_upload_that_loses_the_race_exits_1_and_pins_nothing(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    import model_repo.upload
    from model_repo.object_stores import open_store
    from model_repo.storage import StorageUri
    from tests.model_repo.test_upload_race import RacingStore

    destination = f"s3://{s3_endpoint}/models/stack-race"
    store = open_store(StorageUri.parse(destination))
    art = tmp_path / "rival-art"
    shutil.copytree(small_repo / "llm" / "1" / "engine", art)
    (art / "tokenizer.json").write_text('{"rival": 1}')
    rival = write_repository(tmp_path / "rival", art, GenerationSpec())
    winners = []
    racing = RacingStore(
        store, lambda: winners.append(model_repo.upload.upload_repository(rival, destination, store=store))
    )
    monkeypatch.setattr(model_repo.upload, "open_store", lambda _location: racing)
    pulumi = FakePulumi(destination)
    done = CliRunner().invoke(_app(pulumi), ["model", "upload", str(small_repo), "--stack", "aws-dev"])
    assert done.exit_code == 1 and pulumi.config_calls == []
    assert f"another upload changed CURRENT to {winners[0].version} meanwhile" in done.output
