"""`tritonform eval`: score a local checkpoint, or a served model through its OpenAI API, on chat data."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from tritonform.commands.failures import EXIT_BAD_INPUT, fail
from tritonform.commands.train import bad_input, resolve_model, run_guarded


def eval_command(
    data: Annotated[
        Path,
        typer.Option("--data", help="Chat JSON Lines; each line's last assistant message is the reference."),
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="A local checkpoint directory, or 'default'.")
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint", help="A served model's OpenAI-compatible base URL (e.g. http://HOST:8000/v1)."
        ),
    ] = None,
    metrics: Annotated[
        str,
        typer.Option(
            "--metrics", help="Comma-separated: exact, rouge, bleu, perplexity (local models only)."
        ),
    ] = "exact,rouge,bleu",
    served_name: Annotated[
        str, typer.Option("--served-model", help="With --endpoint: the model name.")
    ] = "llm",
    api_key_env: Annotated[
        str,
        typer.Option("--api-key-env", help="With --endpoint: the environment variable holding the API key."),
    ] = "OPENAI_API_KEY",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest answer generated.")] = 64,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write eval.json and predictions.jsonl to this folder.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Evaluate a model on chat data: exact match, ROUGE (rouge-score), BLEU (sacrebleu) against each
    example's last assistant message, and the perplexity of those answers. A deployed stack (--endpoint)
    is evaluated the same way as a local checkpoint (--model)."""
    from model_repo.training.data import load_chat_jsonl
    from model_repo.training.evaluate import evaluate, parse_metrics

    if (model is None) == (endpoint is None):
        raise fail("give exactly one of --model PATH|default or --endpoint URL", EXIT_BAD_INPUT)
    if endpoint is not None:
        from urllib.parse import urlsplit

        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise fail(
                f"--endpoint {endpoint!r} is not an http(s) URL; give the served API's base, like "
                "http://HOST:8000/v1",
                EXIT_BAD_INPUT,
            )
    if max_new_tokens < 1:
        raise fail(f"--max-new-tokens must be at least 1 (got {max_new_tokens})", EXIT_BAD_INPUT)
    if out is not None and out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file; name a folder for the figures and answers", EXIT_BAD_INPUT)
    names = bad_input(lambda: parse_metrics(metrics))
    examples = bad_input(lambda: load_chat_jsonl(data))
    path = resolve_model(model) if model is not None else None
    api_key = os.environ.get(api_key_env, "none")
    result = run_guarded(
        "evaluation",
        lambda: evaluate(
            examples, names, model_path=path, endpoint=endpoint, served_name=served_name, api_key=api_key,
            max_new_tokens=max_new_tokens, out=out,
        ),
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(examples)} examples from {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
