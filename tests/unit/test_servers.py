"""The servers ``rungateway --server`` runs: what can be checked without serving."""

from __future__ import annotations

import socket

import pytest

from gateway_node.servers import (
    LISTEN_BACKLOG,
    SERVERS,
    ServerError,
    listen_socket,
    max_message_bytes,
    plain_autobahn_log_fields,
    run_uvicorn,
)


def test_both_servers_are_offered():
    assert set(SERVERS) == {"daphne", "uvicorn"}


def test_listen_socket_listens_on_the_address():
    sock = listen_socket("127.0.0.1", 0)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert sock.getblocking() is False
        with socket.create_connection((host, port), timeout=2):
            pass  # the backlog takes it before anything accepts
    finally:
        sock.close()
    assert LISTEN_BACKLOG == 2048


@pytest.mark.parametrize("host", ["256.0.0.1", "no-such-host.invalid"])
def test_listen_socket_fails_with_server_error_for_a_bad_address(host):
    with pytest.raises(ServerError):
        listen_socket(host, 0)


def test_uvicorn_on_a_taken_port_is_a_server_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(ServerError, match="in use"):
            run_uvicorn(host="127.0.0.1", port=port, node=None)  # type: ignore[arg-type]
    finally:
        taken.close()


def test_message_limit_fits_the_largest_push(settings):
    settings.GATEWAY_MAX_PAYLOAD_BYTES = 65536
    assert max_message_bytes() == 1024 * 1024
    settings.GATEWAY_MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
    assert max_message_bytes() == 8 * 1024 * 1024 + 4096


def test_autobahn_log_fields_stay_plain(monkeypatch):
    from autobahn.websocket import protocol

    monkeypatch.setattr(protocol, "hltype", protocol.hltype)
    monkeypatch.setattr(protocol, "hlval", protocol.hlval)
    plain_autobahn_log_fields()
    method = test_autobahn_log_fields_stay_plain
    assert protocol.hltype(method) is method
    assert protocol.hlval(42) == 42
