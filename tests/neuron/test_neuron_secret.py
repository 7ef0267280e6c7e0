"""Gateway ↔ neuron shared secret, with real processes: a `[[neurons]] secret` is sent as
`Authorization: Bearer`, and a gateway without it (or with a stale one) says why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import NeuronProcess
from ..serve_support import served, synthetic_neuron

SECRET = "correct horse battery staple"
CHAT = {"model": "syn", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC = {"anthropic-version": "2023-06-01"}


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[NeuronProcess]:
    neuron = synthetic_neuron(tmp_path, secret=SECRET)
    yield neuron
    neuron.stop()


def test_a_neuron_with_a_secret_refuses_calls_without_it(guarded: NeuronProcess) -> None:
    with httpx.Client(base_url=guarded.url, timeout=10) as client:
        assert client.get("/health").status_code == 200
        for path in ("/status", "/models", "/v1/models"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 401
        assert client.get("/status", headers={
            "authorization": f"Bearer {SECRET}"}).status_code == 200


def test_a_gateway_with_the_secret_serves_end_to_end(tmp_path: Path,
                                                     guarded: NeuronProcess) -> None:
    with served(tmp_path, [{"name": "n1", "endpoint": guarded.url, "secret": SECRET}]) as gw, \
            httpx.Client(base_url=gw.url, timeout=30) as client:
        reply = client.post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 3
        with client.stream("POST", "/v1/messages", headers=ANTHROPIC,
                           json={**CHAT, "stream": True}) as stream:
            assert stream.status_code == 200
            events = [line for line in stream.iter_lines() if line.startswith("event: ")]
        assert events[0] == "event: message_start" and events[-1] == "event: message_stop"
        [node] = client.get("/admin/fleet").json()["nodes"]
        assert node["up"] and node["last_error"] is None


@pytest.mark.parametrize("secret", [None, "wrong"])
def test_a_gateway_without_the_secret_names_the_auth_failure(
        tmp_path: Path, guarded: NeuronProcess, secret: str | None) -> None:
    entry: dict[str, Any] = {"name": "n1", "endpoint": guarded.url}
    if secret is not None:
        entry["secret"] = secret
    with served(tmp_path, [entry], up=0) as gw, \
            httpx.Client(base_url=gw.url, timeout=30) as client:
        def refused(c: httpx.Client) -> bool:
            return "refused the gateway's credentials" in c.get("/admin/fleet").text

        gw.wait(refused, "the poll's 401 is recorded")
        assert client.get("/health").json()["nodes_up"] == 0
        reply = client.post("/v1/chat/completions", json=CHAT)
        assert reply.status_code == 503
        message = reply.json()["error"]["message"]
        assert "n1: down: neuron `n1` refused the gateway's credentials (HTTP 401" in message
        assert "set `secret` in its [[neurons]] entry" in message
        anthropic = client.post("/v1/messages", headers=ANTHROPIC, json=CHAT)
        assert anthropic.status_code == 529
        assert "refused the gateway's credentials" in anthropic.json()["error"]["message"]


def test_a_secret_changed_under_a_live_node_is_a_502_naming_it(tmp_path: Path) -> None:
    """The node is up with the model loaded when its neuron restarts with another secret:
    the request's 401 is the gateway's fault, not the client's key (never a 401)."""
    first = synthetic_neuron(tmp_path, secret=SECRET)
    port = first.port
    entry = {"name": "n1", "endpoint": first.url, "secret": SECRET}
    # down_after keeps the node (and the model it held) in view while polls fail.
    with served(tmp_path, [entry], gateway={"down_after": 1000}) as gw, \
            httpx.Client(base_url=gw.url, timeout=30) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        first.stop()
        second = NeuronProcess({"listen": f"127.0.0.1:{port}", "secret": "rotated",
                                "memory_budget": "8GiB"}, tmp_path)
        second.port, second.url = port, first.url
        try:
            second.wait_ready()
            for body in (CHAT, {**CHAT, "stream": True}):
                reply = client.post("/v1/chat/completions", json=body)
                assert reply.status_code == 502, reply.text
                assert "neuron `n1` refused the gateway's credentials" in \
                    reply.json()["error"]["message"]
            anthropic = client.post("/v1/messages", headers=ANTHROPIC, json=CHAT)
            assert anthropic.status_code == 502
            assert anthropic.json()["error"]["type"] == "api_error"
        finally:
            second.stop()


def test_secret_files_on_both_sides_serve_end_to_end(tmp_path: Path) -> None:
    """The value lives in one file (a Kubernetes Secret, say) that neuron.toml's
    `secret_file` and the gateway's `[[neurons]] secret_file` both read at start."""
    secret_file = tmp_path / "neuron-secret"
    secret_file.write_text(f"{SECRET}\n")
    neuron = synthetic_neuron(tmp_path, secret_file=str(secret_file))
    try:
        with httpx.Client(base_url=neuron.url, timeout=10) as client:
            assert client.get("/status").status_code == 401
            assert client.get("/status", headers={
                "authorization": f"Bearer {SECRET}"}).status_code == 200
        entry = {"name": "n1", "endpoint": neuron.url, "secret_file": str(secret_file)}
        with served(tmp_path, [entry]) as gw, httpx.Client(base_url=gw.url, timeout=30) as c:
            reply = c.post("/v1/chat/completions", json=CHAT)
            assert reply.status_code == 200, reply.text
    finally:
        neuron.stop()


def test_a_neuron_whose_secret_file_is_empty_does_not_start(tmp_path: Path) -> None:
    empty = tmp_path / "neuron-secret"
    empty.write_text("\n")
    neuron = NeuronProcess({"secret_file": str(empty)}, tmp_path)
    try:
        assert neuron.proc.wait(60) != 0
        assert f"secret_file {empty} is empty" in neuron.log()
    finally:
        neuron.stop()
