"""The local stack's port check binds as the server will: TIME-WAIT leftovers of a stopped stack do not
hold the port (a restart after a crash works at once), a listening process does."""

from __future__ import annotations

import socket

import pytest

from serving.local_stack import StackError, check_port_free


def test_connections_in_time_wait_do_not_hold_the_port() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's listener does
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first: its end of the connection enters TIME-WAIT
        client.close()
    check_port_free("127.0.0.1", port)


def test_a_listening_process_holds_the_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(StackError, match="is not available"):
            check_port_free("127.0.0.1", listener.getsockname()[1])
