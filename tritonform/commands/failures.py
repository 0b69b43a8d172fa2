"""How the training and evaluation commands fail: one clear line on stderr and an exit code (2 for bad
input, 1 for a failed run), never a traceback."""

from __future__ import annotations

import typer

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def fail(message: str, code: int) -> typer.Exit:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)
