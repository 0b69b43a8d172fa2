"""`tritonform serve` as a child process, the way a user, a shell script or a process manager runs it."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from serving.triton_local import free_port

# cli.py wires `serve.register(app)` in; the test builds the same app around it.
CLI = (
    "import typer\n"
    "from tritonform.commands import serve\n"
    "app = typer.Typer(pretty_exceptions_enable=False)\n"
    "app.callback()(lambda: None)\n"
    "serve.register(app)\n"
    "app()\n"
)


def _as_background_job() -> None:
    # What a non-interactive shell does to a job started with `&`: SIGINT ignored, inherited by exec.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_serve(*args: str, background_job: bool = False) -> subprocess.Popen[str]:
    """`tritonform serve ARGS`, output piped; `background_job`: started like `serve &` from a script."""
    return subprocess.Popen(
        [sys.executable, "-c", CLI, "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TRITONFORM_API_KEYS": ""},
        preexec_fn=_as_background_job if background_job else None,
    )


def lines(stream: object) -> queue.Queue[str]:
    """The lines a stream prints, read by a thread as they come."""
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            out.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return out


def wait_ready(process: subprocess.Popen[str], timeout_s: float = 120) -> list[str]:
    """The lines serve printed up to "Press Ctrl-C" (it is ready then); fails if it exits first."""
    out = lines(process.stdout)
    printed: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not any("Press Ctrl-C" in line for line in printed):
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "\n".join(printed)
        with contextlib.suppress(queue.Empty):
            printed.append(out.get(timeout=1))
    return printed


def scratch_dirs() -> set[str]:
    """Triton's scratch directories now in the temporary folder."""
    return {p.name for p in Path(tempfile.gettempdir()).glob("tritonform-triton-*")}


@contextlib.contextmanager
def served(repository: Path, timeout_s: float = 300) -> Iterator[tuple[str, str]]:
    """`tritonform serve --model-repo REPOSITORY` on a free port, ready: yields (its URL, the API key
    it printed); stopped with Ctrl-C (SIGINT) afterwards, killed if it does not stop within a minute."""
    port = free_port()
    process = start_serve("--model-repo", str(repository), "--port", str(port))
    try:
        text = "\n".join(wait_ready(process, timeout_s=timeout_s))
        key = re.search(r"API key: (\S+)", text)
        assert key, text
        yield f"http://127.0.0.1:{port}", key.group(1)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def ask_greedily(url: str, key: str, conversations: Sequence[Sequence[Any]], max_tokens: int) -> list[str]:
    """Each conversation's answer through the official openai client at temperature 0, stripped."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
    answers = []
    for messages in conversations:
        reply = client.chat.completions.create(
            model="llm",
            messages=list(messages),
            max_tokens=max_tokens,
            temperature=0,
        )
        answers.append((reply.choices[0].message.content or "").strip())
    return answers
