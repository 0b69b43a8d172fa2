"""`tritonform serve` end to end: a real Triton and the gateway in a child process, used through the
official `openai` client, stopped with Ctrl-C (SIGINT) leaving no process and no temporary folder."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from serving.triton_local import free_port
from tests.procs import PARENT, live_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# cli.py wires `serve.register(app)` in; until then the test builds the same app around it.
CLI = (
    "import typer\n"
    "from tritonform.commands import serve\n"
    "app = typer.Typer(pretty_exceptions_enable=False)\n"
    "app.callback()(lambda: None)\n"
    "serve.register(app)\n"
    "app()\n"
)


def _serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TRITONFORM_API_KEYS": ""},
    )


def _lines(stream: object) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:  # type: ignore[attr-defined]
            out.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return out


def _scratch_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("tritonform-triton-*")}


@pytest.fixture
def serve_process(tiny_repository: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = _serve("--model-repo", str(tiny_repository), "--port", str(port))
    yield process, port
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_serve_answers_the_openai_client_and_ctrl_c_stops_everything(
    serve_process: tuple[subprocess.Popen[str], int],
) -> None:
    scratch_before = _scratch_dirs()
    process, port = serve_process
    out = _lines(process.stdout)
    printed: list[str] = []
    deadline = time.monotonic() + 120
    while not any("Press Ctrl-C" in line for line in printed):
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "\n".join(printed)
        with contextlib.suppress(queue.Empty):
            printed.append(out.get(timeout=1))
    text = "\n".join(printed)
    assert f"http://127.0.0.1:{port}" in text
    key = re.search(r"API key: (\S+)", text)
    assert key, text
    assert (
        "curl http://127.0.0.1" in text
        and f"Bearer {key.group(1)}" in text
        and "from openai import OpenAI" in text
    )

    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(1), max_retries=0, timeout=60
    )
    messages: list[dict[str, str]] = [{"role": "user", "content": "hello"}]
    chunks = list(
        client.chat.completions.create(model="llm", messages=messages, max_tokens=8, stream=True)  # type: ignore[arg-type]
    )
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    children = live_processes(PARENT, process.pid)
    assert children, "Triton should run as a child of `tritonform serve`"
    assert _scratch_dirs() - scratch_before

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=40) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert _scratch_dirs() - scratch_before == set()


def test_port_in_use_is_one_clear_line(tiny_repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = _serve("--model-repo", str(tiny_repository), "--port", str(taken.getsockname()[1]))
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "Traceback" not in err and "is not available" in err and len(err.strip().splitlines()) == 1


def test_missing_repository_is_one_clear_line(tmp_path: Path) -> None:
    process = _serve("--model-repo", str(tmp_path / "nope"), "--port", str(free_port()))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "Traceback" not in err and "does not exist" in err and len(err.strip().splitlines()) == 1
