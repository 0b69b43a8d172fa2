"""`tritonform serve` end to end: a real Triton and the gateway in a child process, used through the
official `openai` client, stopped with Ctrl-C (SIGINT) leaving no process and no temporary folder."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from serving.triton_local import free_port
from tests.e2e.serve_process import scratch_dirs, start_serve, wait_ready
from tests.procs import PARENT, live_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def serve_process(tiny_repository: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = start_serve("--model-repo", str(tiny_repository), "--port", str(port))
    yield process, port
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_serve_answers_the_openai_client_and_ctrl_c_stops_everything(
    serve_process: tuple[subprocess.Popen[str], int],
) -> None:
    scratch_before = scratch_dirs()
    process, port = serve_process
    text = "\n".join(wait_ready(process))
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
    assert scratch_dirs() - scratch_before

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=40) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert scratch_dirs() - scratch_before == set()


def test_port_in_use_is_one_clear_line(tiny_repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = start_serve("--model-repo", str(tiny_repository), "--port", str(taken.getsockname()[1]))
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "Traceback" not in err and "is not available" in err and len(err.strip().splitlines()) == 1


def test_missing_repository_is_one_clear_line(tmp_path: Path) -> None:
    process = start_serve("--model-repo", str(tmp_path / "nope"), "--port", str(free_port()))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "Traceback" not in err and "does not exist" in err and len(err.strip().splitlines()) == 1
