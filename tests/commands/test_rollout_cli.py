"""Canary rollout commands: `model upload --stack --canary` sets the stack's canary (not its stable
version), `promote` and `rollback` end it through the pulumi CLI (faked here), and `status` shows both
versions' figures from a gateway's /canary or from Prometheus and the decision ConfigMap."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from tests.commands.test_upload_cli import FakePulumi, _version
from tests.model_repo.test_upload import s3_endpoint, small_repo  # noqa: F401 - fixtures
from tritonform.commands.rollout import (
    RolloutError,
    register_rollout,
    render_status,
    status_from_cluster,
    status_from_url,
)
from tritonform.commands.upload import register_upload

pytestmark = pytest.mark.timeout(180)
CANARY = "20261202T080000Z-abcdef012345"


class ConfigPulumi(FakePulumi):
    """FakePulumi that also keeps a config: `get` answers from it, `set`/`rm` change it."""

    def __init__(self, config: dict[str, str] | None = None) -> None:
        super().__init__("s3://unused/models")
        self.config = dict(config or {})
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> Any:
        class Done:
            returncode, stdout, stderr = 0, "", ""

        if command[1] != "config":
            return super().__call__(command, **kwargs)
        self.commands.append(command)
        verb, key = command[2], command[6]
        if verb == "get":
            if key not in self.config:
                Done.returncode, Done.stderr = 255, f"configuration key '{key}' not found for stack"
            Done.stdout = self.config.get(key, "")
        elif verb == "set":
            self.config[key] = command[7]
        elif verb == "rm":
            self.config.pop(key, None)
        return Done()


def _app(run: Callable[..., Any]) -> Any:
    app, model_app = typer.Typer(), typer.Typer()
    register_upload(model_app, run=run)
    register_rollout(model_app, run=run)
    app.add_typer(model_app, name="model")
    return app


def test_upload_with_canary_sets_the_canary_and_leaves_the_stable_version(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
) -> None:
    pulumi = FakePulumi(f"s3://{s3_endpoint}/models/canary")
    args = ["model", "upload", str(small_repo), "--stack", "aws-dev", "--canary", "15"]
    done = CliRunner().invoke(_app(pulumi), args)
    assert done.exit_code == 0, done.output
    version = _version(done.output)
    assert pulumi.config_calls == [
        ["pulumi", "config", "set", "--path", "--stack", "aws-dev", "tritonform:canary.version", version],
        ["pulumi", "config", "set", "--path", "--stack", "aws-dev", "tritonform:canary.weight", "15"],
    ]
    assert "canary for 15% of conversations" in done.output


@pytest.mark.parametrize(
    "extra", [["--to", "s3://b/m"], ["--stack", "aws-dev", "--no-set-version"]], ids=["to", "no-set"]
)
def test_a_canary_needs_a_stack_whose_version_it_may_set(extra: list[str], small_repo: Path) -> None:  # noqa: F811
    pulumi = ConfigPulumi()
    done = CliRunner().invoke(_app(pulumi), ["model", "upload", str(small_repo), *extra, "--canary", "10"])
    assert done.exit_code == 2 and "--canary starts a canary on a stack" in done.output
    assert pulumi.commands == []


def test_promote_makes_the_canary_stable_and_ends_the_rollout() -> None:
    pulumi = ConfigPulumi({"tritonform:canary.version": CANARY, "tritonform:triton.modelVersion": "old"})
    done = CliRunner().invoke(_app(pulumi), ["model", "promote", "--stack", "gcp-prod"])
    assert done.exit_code == 0, done.output
    assert pulumi.config == {"tritonform:triton.modelVersion": CANARY}
    assert "pulumi up --stack gcp-prod" in done.output


def test_rollback_removes_the_canary_only() -> None:
    pulumi = ConfigPulumi({"tritonform:canary.version": CANARY, "tritonform:triton.modelVersion": "old"})
    done = CliRunner().invoke(_app(pulumi), ["model", "rollback", "--stack", "gcp-prod"])
    assert done.exit_code == 0, done.output
    assert pulumi.config == {"tritonform:triton.modelVersion": "old"}


@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_without_a_canary_promote_and_rollback_say_how_to_start_one(command: str) -> None:
    pulumi = ConfigPulumi({"tritonform:triton.modelVersion": "old"})
    done = CliRunner().invoke(_app(pulumi), ["model", command, "--stack", "aws-dev"])
    assert done.exit_code == 2
    assert "has no canary" in done.output and "--canary PERCENT" in done.output
    assert pulumi.config == {"tritonform:triton.modelVersion": "old"}


STATUS = {
    "versions": {"stable": "v1", "canary": "v2"},
    "configured_weight_percent": 20,
    "weight_percent": 0,
    "window": {
        "stable": {"requests": 40, "errors": 0, "ttft_p95_s": 0.12, "error_ratio": 0.0},
        "canary": {"requests": 10, "errors": 5, "ttft_p95_s": 0.3, "error_ratio": 0.5},
    },
    "decision": {"at": "2026-12-01T22:00:00+00:00", "reason": "error ratio 50.0% ...", "version": "v2"},
}


def _text(status: dict[str, Any]) -> str:
    console = Console(width=140, record=True)
    console.print(render_status(status))
    return console.export_text()


def test_status_shows_both_versions_and_the_decision() -> None:
    text = _text(STATUS)
    assert "v1" in text and "v2" in text and "50.0%" in text and "300 ms" in text and "120 ms" in text
    assert "rolled back automatically at 2026-12-01T22:00:00+00:00" in text
    assert "canary weight now 0% (configured 20%)" in text


class _Answer:
    def __init__(self, body: Any, status: int = 200) -> None:
        self.body, self.status_code = body, status

    def json(self) -> Any:
        return self.body


def test_status_from_a_gateway_url_reads_its_canary_endpoint() -> None:
    seen: list[str] = []
    assert status_from_url("http://gw:8080/", lambda url: seen.append(url) or _answer_ok()) == STATUS
    assert seen == ["http://gw:8080/canary"]
    with pytest.raises(RolloutError, match="runs no canary"):
        status_from_url("http://gw", lambda _url: _Answer({"canary": None}))


def _answer_ok() -> _Answer:
    return _Answer(STATUS)


class _ConfigMaps:
    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        assert (name, namespace) == ("tritonform-canary", "llm")
        return type("ConfigMap", (), {"data": {"decision": json.dumps(STATUS["decision"])}})()


def test_status_of_a_stack_sums_every_gateway_through_prometheus() -> None:
    series = {
        "requests": [("stable", "v1", "40"), ("canary", "v2", "10")],
        "errors": [("stable", "v1", "0"), ("canary", "v2", "5")],
        "ttft_p95_s": [("stable", "v1", "0.12"), ("canary", "v2", "0.3")],
    }
    queries: list[str] = []

    def prometheus(url: str, params: dict[str, str]) -> _Answer:
        assert url == "http://prom:9090/api/v1/query"
        queries.append(params["query"])
        figure = next(f for f in series if f.replace("_s", "").split("_")[-1] in params["query"])
        result = [{"metric": {"role": r, "version": v}, "value": [0, x]} for r, v, x in series[figure]]
        return _Answer({"status": "success", "data": {"result": result}})

    status = status_from_cluster("llm", "http://prom:9090", get=prometheus, api=_ConfigMaps())
    assert status["versions"] == {"stable": "v1", "canary": "v2"}
    assert status["window"]["canary"] == {"requests": 10, "errors": 5, "ttft_p95_s": 0.3, "error_ratio": 0.5}
    assert status["decision"] == STATUS["decision"]
    assert all(q.startswith(("sum by (role, version)", "max by (role, version)")) for q in queries)
