"""`tritonform build` and `tritonform model ...`: help, clear one-line errors with exit 2, success path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tritonform.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_llama_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_repo.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("cli-tiny") / "checkpoint", "llama", seed=0)


@pytest.mark.parametrize(
    "args", [["build", "--help"], ["model", "--help"], ["model", "fetch-default", "--help"]]
)
def test_help_is_available(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Usage" in result.output


def test_model_sub_app_lists_fetch_default_and_upload() -> None:
    result = runner.invoke(app, ["model", "--help"])
    assert "fetch-default" in result.output and "upload" in result.output


def _one_line_error(result: object) -> str:
    out = result.output  # type: ignore[attr-defined]
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    return errors[0]


def test_missing_checkpoint_directory_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "does not exist" in _one_line_error(result)


def test_unsupported_architecture_exits_2(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = runner.invoke(app, ["build", "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unsupported architecture 'bert'" in _one_line_error(result)


@pytest.mark.parametrize(
    ("flag", "value"), [("--quantize", "int3"), ("--backend", "vllm"), ("--min-agreement", "2")]
)
def test_bad_flags_exit_2(tiny_llama_checkpoint: Path, tmp_path: Path, flag: str, value: str) -> None:
    result = runner.invoke(
        app, ["build", "--model", str(tiny_llama_checkpoint), "--out", str(tmp_path / "o"), flag, value]
    )
    assert result.exit_code == 2 and flag in _one_line_error(result)


def test_failed_gate_exits_1_with_the_figures(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "build",
            "--model",
            str(tiny_llama_checkpoint),
            "--out",
            str(tmp_path / "o"),
            "--quantize",
            "int8",
            "--min-agreement",
            "1.0",
        ],
    )
    assert result.exit_code == 1 and "next-token agreement" in _one_line_error(result)
    assert not (tmp_path / "o").exists()


def test_a_build_summary_shows_both_quality_figures(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["build", "--model", str(tiny_llama_checkpoint), "--out", str(out), "--quantize", "int8"]
    result = runner.invoke(app, [*args, "--min-agreement", "0", "--max-ppl-increase", "10"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "on held-out text" in text and "while generating" in text and "perplexity" in text
    assert "memory: " in text and "GiB of RAM at its peak" in text and "this machine has" in text
    assert (out / "REPOSITORY.json").is_file()
