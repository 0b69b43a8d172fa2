"""Model commands: `tritonform build` and `tritonform model ...` (filled in by the model-repository work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the model commands to the main app."""
