"""Which ports a stack service can listen on: what the server's own bind would say."""

from __future__ import annotations

import socket

from ledgerflow.stack.process import port_in_use, port_taken


def test_a_listening_port_is_taken_and_a_closed_one_is_not() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert port_taken("127.0.0.1", port)
    assert not port_taken("127.0.0.1", port)


def test_the_local_end_of_a_connection_is_taken_though_nothing_listens_there() -> None:
    """A default port in the ephemeral range can be some client's end of a connection: a
    connect finds nothing listening, yet the server's bind would fail."""
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        local = client.getsockname()[1]
        assert not port_in_use("127.0.0.1", local)
        assert port_taken("127.0.0.1", local)
