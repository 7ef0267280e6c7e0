"""Proxy retries over a fixture fleet (fleet_mixed.json: `llama-3.1-8b` is ready on gpu-b
with a free slot, and on gpu-a, full): the real Placer, router, quarantine and OpenAI
dialect, a stand-in Fleet (tests/gateway/fixture_fleet.py) and stand-in neuron clients.

The clients fail exactly as NeuronClient.open does: `Unreachable` when the connection
is never made (the request did not leave), `Severed` when it breaks after the request
went out (the neuron may have died holding it). That is the seam under test here: what
the proxy does with each. Real neurons refusing, dying and hanging are in
test_gateway_failover.py, test_gateway_poison.py and test_gateway_hang.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from cortex import Call, CatalogueEntry, Dialect, RequestRecord
from cortex.errors import Unreachable
from cortex.gateway.client import Severed
from cortex.gateway.prefixes import PrefixTable
from cortex.gateway.proxy import Proxy
from cortex.gateway.quarantine import Quarantine
from cortex.gateway.traffic import Traffic
from cortex_plugins.openai import OpenAIDialect

from .fixture_fleet import FixtureFleet, fixture, live_config, placer_over, profile

pytestmark = [pytest.mark.anyio]

MODEL = "llama-3.1-8b"
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
          "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "Hi"}}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


class _Reply:
    """A neuron's whole 200 answer, as the proxy reads it from aiohttp."""

    status = 200
    headers: dict[str, str] = {}

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def read(self) -> bytes:
        return self.body

    def close(self) -> None:
        pass


class Neuron:
    """A neuron client that answers, refuses the connection, or drops it once sent."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.sent: list[bytes] = []

    async def open(self, path: str, body: bytes, *, request_id: str = "") -> _Reply:
        if self.how == "refuses":
            raise Unreachable("neuron did not answer: Connection refused")
        self.sent.append(body)
        if self.how == "drops":
            raise Severed("neuron dropped the connection before answering")
        return _Reply(json.dumps(ANSWER).encode())


class Finished:
    """The request_finished hook."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def request_finished(self, *, record: RequestRecord) -> None:
        self.records.append(record)


class Forwarding:
    """The GatewayAPI the dialect's routes get: forward only."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def forward(self, call: Call, request: Request, dialect: Dialect) -> Response:
        return await self.proxy.forward(call, request, dialect)

    def catalogue(self, request: Request | None = None) -> list[CatalogueEntry]:
        raise NotImplementedError

    def catalogue_entry(self, model: str, request: Request | None = None) -> CatalogueEntry:
        raise NotImplementedError

    def check_stops(self, stops: str | Sequence[str] | msgspec.Raw | None,
                    field: str) -> None:
        pass


class Served:
    def __init__(self, client: httpx.AsyncClient, fleet: FixtureFleet,
                 quarantine: Quarantine, finished: Finished) -> None:
        self.client, self.fleet = client, fleet
        self.quarantine, self.finished = quarantine, finished

    async def chat(self, content: str = "Hello") -> httpx.Response:
        return await self.client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": content}]})


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """The proxy over gpu-b behaving as the test's parameter says, and gpu-a answering."""
    how: dict[str, Any] = request.param
    fleet = FixtureFleet(fixture("fleet_mixed.json"),
                         clients={"gpu-a": Neuron("answers"), "gpu-b": Neuron(how["gpu-b"])})
    fleet.survives["gpu-b"] = how.get("survives", True)
    live = live_config(fleet.view, [profile(MODEL)])
    placer, _, fair = placer_over(fleet, live)
    quarantine = Quarantine(lambda: live.settings)
    finished = Finished()
    proxy = Proxy(placer, fleet.as_fleet(), live=live, fair=fair, prefixes=PrefixTable(),
                  quarantine=quarantine, hook=finished, traffic=Traffic())
    app = Starlette(routes=list(OpenAIDialect().routes(Forwarding(proxy))))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gateway") as client:
        yield Served(client, fleet, quarantine, finished)


def sent(served: Served, node: str) -> int:
    return len(served.fleet.clients[node].sent)


@pytest.mark.parametrize("served", [{"gpu-b": "refuses"}], indirect=True)
async def test_a_connection_never_made_is_retried_on_another_node(served: Served) -> None:
    reply = await served.chat()
    assert reply.status_code == 200
    assert reply.json() == ANSWER
    assert (sent(served, "gpu-b"), sent(served, "gpu-a")) == (0, 1)
    assert served.fleet.made("report_failure") == [("gpu-b",)]
    assert served.fleet.made("survived") == []  # nothing was sent: nobody died holding it
    [record] = served.finished.records
    assert (record.node, record.retries, record.status) == ("gpu-a", 1, 200)
    assert (record.prompt_tokens, record.completion_tokens) == (3, 1)


@pytest.mark.parametrize("served", [{"gpu-b": "drops", "survives": True}], indirect=True)
async def test_a_dropped_connection_on_a_neuron_that_lives_is_retried(served: Served) -> None:
    reply = await served.chat()
    assert reply.status_code == 200
    assert (sent(served, "gpu-b"), sent(served, "gpu-a")) == (1, 1)
    assert served.fleet.made("survived") == [("gpu-b",)]  # asked before going elsewhere
    assert len(served.quarantine) == 0


@pytest.mark.parametrize("served", [{"gpu-b": "drops", "survives": False}], indirect=True)
async def test_a_request_a_neuron_died_holding_goes_nowhere_else_and_is_quarantined(
        served: Served) -> None:
    reply = await served.chat()
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "upstream_died"
    assert (sent(served, "gpu-b"), sent(served, "gpu-a")) == (1, 0)  # poison_retries = 0
    again = await served.chat()  # a client's own retry of the same request
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "request_quarantined"
    assert (sent(served, "gpu-b"), sent(served, "gpu-a")) == (1, 0)
    assert [r.status for r in served.finished.records] == [502, 400]
