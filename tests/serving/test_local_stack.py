"""`serving/local_stack.py`: the port check before the stack starts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from serving.local_stack import StackError, check_port_free

TIME_WAIT = "06"  # the state column of /proc/net/tcp


def _states(port: int) -> set[str]:
    states = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            states.add(fields[3])
    return states


def _leave_time_wait() -> int:
    """A port whose server side closed a connection first (so it sits in TIME-WAIT), no longer listening."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server closes first, as a stopped server does
            client.recv(1)
    return port


def test_a_port_left_in_time_wait_is_free_for_a_restart_at_once() -> None:
    port = _leave_time_wait()
    assert TIME_WAIT in _states(port)  # the case a restart after a crash meets
    check_port_free("127.0.0.1", port)


def test_a_port_someone_listens_on_is_refused_with_one_clear_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 is not available"):
            check_port_free("127.0.0.1", port)
