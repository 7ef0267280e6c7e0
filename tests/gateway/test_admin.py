"""The /admin routes over a fixture fleet (fleet_mixed.json): the real LiveConfig, router
and Placer, a stand-in Fleet (tests/gateway/fixture_fleet.py). The stand-in is right
because these tests check what the routes answer and ask of the fleet; the same routes
against real neurons are in test_gateway_serving.py and the CLI's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from cortex import RouteRequest
from cortex.errors import CortexError
from cortex.gateway.admin import admin_routes
from cortex.gateway.dialects import Dialects
from cortex.gateway.state import LiveConfig
from cortex.gateway.traffic import Traffic

from .fixture_fleet import FixtureFleet, GiB, fixture, live_config, placer_over, profile

pytestmark = [pytest.mark.anyio]

MODELS = ["llama-3.1-8b", "qwen2.5-7b", "mistral-7b", "nomic-embed", "phi-4"]


class Admin:
    def __init__(self, client: httpx.AsyncClient, fleet: FixtureFleet, live: LiveConfig
                 ) -> None:
        self.client, self.fleet, self.live = client, fleet, live


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    snapshot = fixture("fleet_mixed.json")
    fleet = FixtureFleet(snapshot, estimates={"gpu-a": 6 * GiB, "gpu-b": 6 * GiB})
    live = live_config(snapshot, [profile(m) for m in MODELS], load_timeout=5.0)
    placer, loader, fair = placer_over(fleet, live)
    routes = admin_routes(placer, fleet.as_fleet(), loader, live, traffic=Traffic(),
                          turns=fair)

    async def on_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CortexError)
        return Dialects(()).error_response(request.url.path, exc)

    app = Starlette(routes=routes, exception_handlers={CortexError: on_error})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gateway") as client:
        yield Admin(client, fleet, live)


def expected(live: LiveConfig, fleet: FixtureFleet, request: RouteRequest) -> object:
    """The router's own decision over the fixture, as JSON."""
    return msgspec.json.decode(msgspec.json.encode(live.router.decide(request, fleet.view)))


async def test_route_answers_the_routers_decision_without_estimates_for_a_ready_model(
        admin: Admin) -> None:
    reply = await admin.client.get("/admin/route", params={"model": "llama-3.1-8b"})
    assert reply.status_code == 200
    body = reply.json()
    assert body.pop("requested") == "llama-3.1-8b"
    assert body == expected(admin.live, admin.fleet, RouteRequest(model="llama-3.1-8b"))
    assert body["action"] == "serve" and body["node"] == "gpu-b"  # gpu-a's slots are full
    assert admin.fleet.estimates.asked == []  # a ready copy needs no estimate


async def test_route_asks_for_estimates_when_the_model_must_be_placed(admin: Admin) -> None:
    reply = await admin.client.get("/admin/route", params={"model": "phi-4"})
    assert reply.status_code == 200
    body = reply.json()
    del body["requested"]
    assert body == expected(admin.live, admin.fleet, RouteRequest(
        model="phi-4", estimates={"gpu-a": 6 * GiB, "gpu-b": 6 * GiB}))
    assert body["action"] == "load"
    assert admin.fleet.estimates.asked == ["phi-4"]


async def test_route_to_a_node_that_is_not_in_the_fleet_is_404(admin: Admin) -> None:
    reply = await admin.client.get("/admin/route",
                                   params={"model": "llama-3.1-8b", "node": "gpu-z"})
    assert reply.status_code == 404
    assert "gpu-z" in reply.json()["error"]["message"]


async def test_fleet_shows_the_fleet_and_the_live_router(admin: Admin) -> None:
    body = (await admin.client.get("/admin/fleet")).json()
    assert [n["name"] for n in body["nodes"]] == ["gpu-a", "gpu-b", "cpu-c"]
    assert (body["routing"], body["eviction"]) == ("affinity", "lru")
    assert body["loads"] == [] and body["turns"] == {}


async def test_pin_places_the_model_and_records_the_pin_then_unpin_clears_it(
        admin: Admin) -> None:
    version = admin.live.version
    reply = await admin.client.post("/admin/models/llama-3.1-8b/pin")
    assert reply.json() == {"model": "llama-3.1-8b", "pinned": True, "node": "gpu-b"}
    live_profile = admin.live.profiles.get("llama-3.1-8b")
    assert live_profile is not None and live_profile.pinned
    assert admin.live.version > version  # the reconciler is told
    assert admin.fleet.made("pin") == [("gpu-b", "llama-3.1-8b", True)]
    refused = await admin.client.post("/admin/models/llama-3.1-8b/unload")
    assert refused.status_code == 409
    reply = await admin.client.post("/admin/models/llama-3.1-8b/unpin")
    assert reply.json() == {"model": "llama-3.1-8b", "pinned": False}
    # Unpinned on every neuron holding a copy, so no replica keeps it pinned.
    assert admin.fleet.made("pin")[1:] == [("gpu-a", "llama-3.1-8b", False),
                                           ("gpu-b", "llama-3.1-8b", False)]
    assert admin.fleet.made("unload") == []


async def test_unload_unloads_every_copy_and_reload_without_a_reloader_is_refused(
        admin: Admin) -> None:
    reply = await admin.client.post("/admin/models/llama-3.1-8b/unload")
    assert reply.json() == {"model": "llama-3.1-8b", "unloaded_from": ["gpu-a", "gpu-b"]}
    assert admin.fleet.made("unload") == [("gpu-a", "llama-3.1-8b", "manual"),
                                          ("gpu-b", "llama-3.1-8b", "manual")]
    reply = await admin.client.post("/admin/reload")
    assert reply.status_code == 409  # an embedded configuration has nothing to re-read
