"""Malformed requests never put the endpoint key or a payload in the server's log, and client
mistakes are answered 4xx, not 5xx."""

from __future__ import annotations

import json
import socket
import time

from engine.providers.local.testing import deploy

BODY = json.dumps({"data": [1, 2]}).encode()


def send_raw(server, data: bytes) -> bytes:
    host, port = server.server_address()
    with socket.create_connection((host, port), timeout=5) as connection:
        connection.sendall(data)
        chunks = []
        while True:
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def test_an_oversized_header_or_url_leaves_no_key_or_payload_in_the_log(local_server, toy_model):
    deploy(local_server, "secret", {"secret-a": toy_model("secret")}, {"secret-a": 100})
    key = local_server.endpoint_key("secret")
    padding = "p" * 9000
    oversized_header = (
        f"POST /endpoints/secret/score HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key} {padding}\r\nContent-Length: 2\r\n\r\n{{}}"
    ).encode()
    long_url = (
        f"POST /endpoints/secret/score?ssn=123-45-6789&pad={padding} HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 2\r\n\r\n{}"
    ).encode()
    assert 400 <= status_of(send_raw(local_server, oversized_header)) < 500
    assert 400 <= status_of(send_raw(local_server, long_url)) < 500
    assert local_server.score("secret", BODY).status == 200, "the server is still up"
    time.sleep(0.5)
    files = [p for p in local_server.home.rglob("*") if p.is_file() and p.name != "keys.json"]
    leaked = [p.name for p in files if key.encode() in p.read_bytes()]
    assert leaked == []
    assert [p.name for p in files if b"123-45-6789" in p.read_bytes()] == []


def test_a_non_ascii_key_is_unauthorised_and_deep_json_is_a_bad_request(local_server, toy_model):
    deploy(local_server, "odd", {"odd-a": toy_model("odd")}, {"odd-a": 100})
    key = local_server.endpoint_key("odd")
    header = "Authorization: Bearer clé\r\n".encode()
    request = (
        b"POST /endpoints/odd/score HTTP/1.1\r\nHost: x\r\n"
        + header
        + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    assert status_of(send_raw(local_server, request)) == 401
    deep = b"[" * 100_000 + b"]" * 100_000
    request = (
        b"POST /endpoints/odd/score HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {key}\r\n".encode()
        + f"Content-Length: {len(deep)}\r\nConnection: close\r\n\r\n".encode()
        + deep
    )
    assert status_of(send_raw(local_server, request)) == 400
