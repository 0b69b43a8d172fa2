"""`tritonform serve`'s first run: each build step on its own progress line, the libraries' warnings in
the build log and not on the terminal, `--quiet` silent, and the banner's word on the demo model."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tritonform.commands import serve as serve_command
from tritonform.commands.build_progress import BuildProgress


def _fake_build(say: object) -> Path:
    """What build_default_repository reports, with a library warning in the middle of a step."""
    assert callable(say)
    say("building the default model's repository (int4; first run only, a few minutes)")
    say("build step: export")
    warnings.warn("TracerWarning: converting a tensor to a Python boolean", UserWarning, stacklevel=1)
    logging.getLogger("transformers").warning("transformers says something noisy")
    say("build step: quantize")
    say("model repository ready at /somewhere")
    return Path("/somewhere")


@pytest.mark.parametrize("quiet", [False, True])
def test_build_steps_are_shown_and_library_warnings_go_to_the_build_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    import model_repo.build
    import model_repo.checkpoint

    out = io.StringIO()
    monkeypatch.setattr(serve_command, "console", Console(file=out, width=200, force_terminal=False))
    monkeypatch.setattr(model_repo.build, "build_default_repository", _fake_build)
    monkeypatch.setattr(model_repo.checkpoint, "cache_dir", lambda: tmp_path)
    assert serve_command._build_default(quiet) == Path("/somewhere")
    shown = out.getvalue()
    log = (tmp_path / "logs" / "build-default.log").read_text()
    assert (
        "TracerWarning" in log and "transformers says something noisy" in log and "build step: export" in log
    )
    assert "TracerWarning" not in shown and "noisy" not in shown
    if quiet:
        assert shown == ""
    else:
        assert "export" in shown and "quantize" in shown and "5-6 minutes" in shown
        assert str(tmp_path / "logs" / "build-default.log") in shown


def test_the_progress_records_each_steps_time_and_restores_warnings(tmp_path: Path) -> None:
    before = warnings.filters[:]
    with BuildProgress(Console(file=io.StringIO()), tmp_path / "b.log") as progress:
        progress("build step: a")
        progress("build step: b")
    assert [name for name, _ in progress.steps] == ["a", "b"]
    assert all(seconds >= 0 for _, seconds in progress.steps)
    assert warnings.filters == before and not logging.getLogger("py.warnings").handlers


def test_serve_help_explains_quiet_and_the_first_run() -> None:
    import typer

    app = typer.Typer()
    app.callback()(lambda: None)
    serve_command.register(app)
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--quiet" in result.output and "5-6 minutes" in result.output


def test_the_banner_says_the_default_model_is_a_demonstration_and_how_to_serve_your_own() -> None:
    note = serve_command.DEMO_MODEL_NOTE
    assert "135M" in note and "often wrong" in note
    assert "tritonform build --model" in note and "tritonform serve --model-repo" in note


def test_serve_builds_the_cpu_operators_and_hands_their_path_to_triton(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The library's path goes into $TRITONFORM_CPU_OPS (Triton and its model inherit it); a user's own
    value is kept; a failed build warns with the reason and serves on onnxruntime's kernels."""
    import model_repo.cpu_ops
    from model_repo.cpu_ops import CpuOpsError
    from model_repo.runtime.q4_fusion import CPU_OPS_ENV

    err = io.StringIO()
    monkeypatch.setattr(serve_command, "err_console", Console(file=err, width=200))
    monkeypatch.setattr(model_repo.cpu_ops, "build_library", lambda say=None: Path("/cache/lib.so"))
    monkeypatch.delenv(CPU_OPS_ENV, raising=False)
    serve_command._prepare_cpu_ops(quiet=True)
    assert serve_command.os.environ[CPU_OPS_ENV] == "/cache/lib.so"
    monkeypatch.setenv(CPU_OPS_ENV, "off")
    serve_command._prepare_cpu_ops(quiet=True)
    assert serve_command.os.environ[CPU_OPS_ENV] == "off"

    def fails(say: object = None) -> Path:
        raise CpuOpsError("no C compiler on PATH")

    monkeypatch.setattr(model_repo.cpu_ops, "build_library", fails)
    monkeypatch.delenv(CPU_OPS_ENV)
    serve_command._prepare_cpu_ops(quiet=False)
    assert CPU_OPS_ENV not in serve_command.os.environ
    warned = err.getvalue()
    assert "warning: no C compiler on PATH" in warned and "onnxruntime's own kernels" in warned
