"""The `tritonform` command line: one typer app, command groups registered from tritonform.commands."""

from __future__ import annotations

import typer

from tritonform.commands import eval as eval_cmd
from tritonform.commands import infra, init, model, serve, top, train

app = typer.Typer(
    name="tritonform",
    help=(
        "Take a large language model from a checkpoint to an OpenAI-compatible endpoint: "
        "build a Triton model repository, serve it locally, or plan the cloud stack offline."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keep `tritonform` a command group even while only one command is registered."""


infra.register(app)
init.register(app)
model.register(app)
serve.register(app)
train.register(app)
eval_cmd.register(app)
top.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
