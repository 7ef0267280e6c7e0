"""Nothing fails silently (issue #18): a neuron that never comes up, or refuses the
gateway's secret, is in the gateway's log with the reason; a failed [[preload]] is in
the neuron's; the request log has method, path and the reason of each 4xx or 5xx, and
a line for requests no route serves."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ..conftest import NeuronProcess, free_port
from ..serve_support import GatewayProcess, served, synthetic_neuron


def wait_for_line(process: GatewayProcess, text: str) -> str:
    """The first log line holding `text`, once there is one."""
    process.wait(lambda _: text in process.log(), f"the log says {text!r}")
    return next(line for line in process.log().splitlines() if text in line)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("silent")
    neuron = synthetic_neuron(tmp)
    try:
        with served(tmp, [{"name": "n1", "endpoint": neuron.url}]) as process:
            yield process
    finally:
        neuron.stop()


def test_a_served_request_is_logged_with_method_and_path(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none")
    reply = client.chat.completions.with_raw_response.create(
        model="syn", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    line = wait_for_line(gateway, f"request_id={reply.headers['x-request-id']} ")
    assert " method=POST path=/v1/chat/completions model=syn node=n1 " in line, line
    assert " status=200 " in line and "reason=" not in line, line


def test_a_refused_request_is_logged_with_its_reason(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none")
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="no-such-model", max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}])
    line = wait_for_line(gateway, f"request_id={refused.value.response.headers['x-request-id']} ")
    assert " model=no-such-model node=- " in line and " status=404 " in line, line
    assert re.search(r' reason="[^"]*no-such-model', line), line


def test_a_path_no_route_serves_gets_a_line(gateway: GatewayProcess) -> None:
    reply = httpx.post(f"{gateway.url}/v1/chat/completion", json={}, timeout=30)
    assert reply.status_code == 404
    line = wait_for_line(gateway, f"request_id={reply.headers['x-request-id']} ")
    assert line.endswith(' method=POST path=/v1/chat/completion status=404 '
                         'reason="no route POST /v1/chat/completion"'), line


def test_a_body_refused_before_any_model_gets_a_line(gateway: GatewayProcess) -> None:
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{not json",
                       headers={"content-type": "application/json"}, timeout=30)
    assert reply.status_code == 400
    line = wait_for_line(gateway, f"request_id={reply.headers['x-request-id']} ")
    assert " method=POST path=/v1/chat/completions status=400 reason=" in line, line


def test_a_neuron_that_never_comes_up_is_logged_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    with served(tmp_path, [{"name": "absent", "endpoint": f"http://127.0.0.1:{port}"}],
                up=0) as gateway:
        line = wait_for_line(gateway, "neuron absent is not up: ")
    assert f"neuron `absent` (http://127.0.0.1:{port}) did not answer" in line, line


def test_a_neuron_refusing_the_secret_is_logged_in_the_gateway(tmp_path: Path) -> None:
    neuron = synthetic_neuron(tmp_path, secret="the-neuron-secret")
    try:
        with served(tmp_path, [{"name": "locked", "endpoint": neuron.url,
                                "secret": "another-secret"}], up=0) as gateway:
            line = wait_for_line(gateway, "neuron locked is not up: ")
    finally:
        neuron.stop()
    assert "refused the gateway's credentials" in line, line
    assert "set `secret` in its [[neurons]] entry" in line, line


def test_a_failed_preload_is_logged_on_the_neuron(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    neuron = NeuronProcess({"memory_budget": "8GiB", "model_dirs": [str(tmp_path)],
                            "preload": [{"id": "lost", "source": str(missing)}]}, tmp_path)
    try:
        neuron.wait_ready()
        deadline = time.monotonic() + 60
        while "loading lost failed: " not in neuron.log():
            assert time.monotonic() < deadline, neuron.log()
            time.sleep(0.1)
    finally:
        neuron.stop()
    line = next(x for x in neuron.log().splitlines() if "loading lost failed: " in x)
    assert "WARNING" in line and str(missing) in line, line
