"""Slow and greedy clients against a real `cortex serve` over a synthetic neuron: a body
that stops arriving gets 408 and its connection closed (`body_timeout`), so stalled
clients cannot hold the gateway's connections and file descriptors for ever; and a key
gets no more requests in flight than `max_concurrent_requests` (tests/test_fairness.py
has the fair turns between keys)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..serve_support import GatewayProcess, served, synthetic_neuron

KEY = "stall-key"
CAPPED = "capped-key"
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def neuron_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    neuron = synthetic_neuron(tmp_path_factory.mktemp("stalls-neuron"))
    try:
        yield neuron.url
    finally:
        neuron.stop()


def _stall(port: int, path: str = "/v1/chat/completions", extra: bytes = b"",
           timeout: float = 10, key: str = KEY) -> socket.socket:
    """A connection that sends its head and the first bytes of a 1,000-byte body, then
    nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                 "Content-Length: 1000\r\n".encode() + extra + b"\r\n" + b'{"model": "syn"')
    return sock


def _read_to_close(sock: socket.socket, timeout: float) -> bytes:
    """Everything the gateway sends until it closes the connection (or `timeout`);
    `<reset>` for a connection reset before an answer."""
    sock.settimeout(timeout)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except TimeoutError:
        return answer
    except ConnectionResetError:
        return answer + b"<reset>"
    return answer + b"<closed>"


def _body(answer: bytes) -> dict[str, object]:
    body = answer.removesuffix(b"<closed>").partition(b"\r\n\r\n")[2]
    parsed: dict[str, object] = json.loads(body)
    return parsed


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, neuron_url: str
            ) -> Iterator[GatewayProcess]:
    auth = {"api_keys": [KEY], "max_concurrent_requests": 3,
            "keys": [{"key": CAPPED, "max_concurrent_requests": 2}]}
    with served(tmp_path_factory.mktemp("stalls"), [{"name": "n1", "endpoint": neuron_url}],
                gateway={"body_timeout": BODY_TIMEOUT}, auth=auth) as gw:
        yield gw


def test_a_stalled_body_gets_408_in_its_dialect_and_the_connection_closes(
        gateway: GatewayProcess) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    openai = _stall(port)
    anthropic = _stall(port, "/v1/messages", b"anthropic-version: 2023-06-01\r\n")
    with openai, anthropic:
        answer = _read_to_close(openai, BODY_TIMEOUT + 20)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
        assert b"\r\nconnection: close\r\n" in answer.lower()
        assert answer.endswith(b"<closed>")  # the gateway closed it: nothing held
        error = _body(answer)["error"]
        assert isinstance(error, dict)
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
        assert "body_timeout" in error["message"]
        answer = _read_to_close(anthropic, BODY_TIMEOUT + 20)
        assert answer.startswith(b"HTTP/1.1 408 ") and answer.endswith(b"<closed>")
        assert _body(answer)["type"] == "error"


def test_many_stalled_bodies_do_not_lock_out_other_clients(
        tmp_path: Path, neuron_url: str) -> None:
    """With 160 file descriptors, 200 stalled connections would hold every one of them
    for ever; each is closed after `body_timeout` instead, and a normal client gets in."""
    with served(tmp_path, [{"name": "n1", "endpoint": neuron_url}], nofile=160,
                gateway={"body_timeout": BODY_TIMEOUT}, auth={"api_keys": [KEY]}) as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        stalled: list[socket.socket] = []
        try:
            for _ in range(200):
                try:
                    stalled.append(_stall(port, timeout=2))
                except OSError:
                    break  # the accept queue is full: enough to lock everyone out
            assert len(stalled) >= 150
            # Served reliably: five in a row (a locked-out gateway lets the odd one in
            # when a neuron poll fails and frees a descriptor for a moment).
            in_a_row = 0
            deadline = time.monotonic() + 60
            while in_a_row < 5 and time.monotonic() < deadline:
                reply = None
                with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=5) as client:
                    reply = client.post(f"{gw.url}/v1/chat/completions", json={
                        "model": "syn", "max_tokens": 2,
                        "messages": [{"role": "user", "content": "hi"}]},
                        headers={"authorization": f"Bearer {KEY}"})
                in_a_row = in_a_row + 1 if reply is not None and reply.status_code == 200 else 0
            assert in_a_row == 5, gw.log()[-3000:]
            # Every stalled connection the gateway accepted was answered 408 and closed;
            # on a loaded machine the kernel may reset some it never got to accept while
            # out of descriptors. None is left open.
            deadline = time.monotonic() + 30
            answers = [_read_to_close(sock, max(0.1, deadline - time.monotonic()))
                       for sock in stalled]
            answered = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")
                        and a.endswith(b"<closed>")]
            held = [a[:40] for a in answers if a not in answered and a != b"<reset>"]
            assert not held and len(answered) >= len(stalled) // 2, (len(answered), held[:5])
        finally:
            for sock in stalled:
                sock.close()


def test_a_key_past_max_concurrent_requests_gets_429_in_its_dialect(
        gateway: GatewayProcess) -> None:
    """Two stalled bodies hold the capped key's two requests in flight (the cap counts
    from the request's head to its answer's end): a third gets 429, other keys do not."""
    port = int(gateway.url.rsplit(":", 1)[1])
    chat = {"model": "syn", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    capped = {"authorization": f"Bearer {CAPPED}"}
    with _stall(port, key=CAPPED) as one, _stall(port, key=CAPPED) as two, \
            httpx.Client(base_url=gateway.url, timeout=30) as client:
        # Both stalled requests are in (their heads were read) before the third comes.
        gateway.wait(lambda c: c.post("/v1/chat/completions", json=chat,
                                      headers=capped).status_code == 429,
                     "the capped key's third request is refused", timeout=20)
        reply = client.post("/v1/chat/completions", json=chat, headers=capped)
        assert reply.status_code == 429 and reply.headers["retry-after"] == "1"
        # Refused before its body was read: the connection closes and says so, so the
        # client opens a new one for the next request instead of racing that close.
        assert reply.headers["connection"] == "close"
        error = reply.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "max_concurrent_requests" in error["message"]
        anthropic = client.post("/v1/messages", json=chat, headers={
            **capped, "anthropic-version": "2023-06-01"})
        assert anthropic.status_code == 429
        assert anthropic.json()["error"]["type"] == "rate_limit_error"
        other = client.post("/v1/chat/completions", json=chat,
                            headers={"authorization": f"Bearer {KEY}"})
        assert other.status_code == 200, other.text
        # Once body_timeout frees the stalled two, the key is served again.
        assert _read_to_close(one, BODY_TIMEOUT + 20).startswith(b"HTTP/1.1 408 ")
        assert _read_to_close(two, BODY_TIMEOUT + 20).startswith(b"HTTP/1.1 408 ")
        gateway.wait(lambda c: c.post("/v1/chat/completions", json=chat,
                                      headers=capped).status_code == 200,
                     "the capped key is served again", timeout=20)
