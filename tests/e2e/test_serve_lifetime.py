"""No process outlives `tritonform serve`, however it is stopped (issue 20).

Started as a background job of a script (SIGINT ignored, as a non-interactive shell leaves it), serve
still stops on SIGINT; killed with SIGKILL (as the OOM killer or a cancelled CI job does), its Triton,
the python-backend stubs and the scratch directory go within a bounded wait, and a new serve starts on
the same port at once.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from serving.triton_local import free_port
from tests.e2e.serve_process import scratch_dirs, start_serve, wait_ready
from tests.procs import alive, descendants, wait_gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
GONE_WITHIN_S = 30  # the supervisor's grace is Triton's exit timeout (5 s) + 5 s


def _commands(pids: list[int]) -> str:
    return " ".join(Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids if alive(pid))


def test_a_background_serve_stops_on_sigint_and_leaves_nothing(tiny_repository: Path) -> None:
    before = scratch_dirs()
    process = start_serve(
        "--model-repo", str(tiny_repository), "--port", str(free_port()), background_job=True
    )
    try:
        wait_ready(process)
        started = descendants(process.pid)
        assert "tritonserver" in _commands(started), _commands(started)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert wait_gone(started, timeout_s=5) == []
    assert scratch_dirs() - before == set()


def test_sigkill_leaves_no_triton_and_the_port_serves_again(tiny_repository: Path) -> None:
    before = scratch_dirs()
    port = str(free_port())
    process = start_serve("--model-repo", str(tiny_repository), "--port", port)
    try:
        wait_ready(process)
        started = descendants(process.pid)
        names = _commands(started)
        assert "tritonserver" in names and "triton_python_b" in names, names  # comm is cut at 15 chars
        ours = scratch_dirs() - before
        assert len(ours) == 1
        process.kill()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert wait_gone(started, GONE_WITHIN_S) == [], _commands(started)
    assert scratch_dirs() & ours == set()  # the supervisor removed the dead serve's scratch directory

    again = start_serve("--model-repo", str(tiny_repository), "--port", port)
    try:
        wait_ready(again)
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=60) == 0
    finally:
        if again.poll() is None:
            again.kill()
