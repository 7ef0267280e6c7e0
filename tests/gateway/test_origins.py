"""Browsers on other sites: /admin refuses cross-site requests (keyed or not) while the
same-origin dashboard's work, and a gateway without keys answers only the `Host` names
it knows, so DNS rebinding cannot reach it (cortex.gateway.origins). The app is driven in
process through httpx's ASGI transport: what is tested is the gateway's own checks."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from cortex import build_plugin_manager
from cortex.config import GatewayConfig
from cortex.gateway import create_app

pytestmark = [pytest.mark.anyio]

HOST = "127.0.0.1:31313"
ADMIN = {"authorization": "Bearer root"}


def gateway(**config: Any) -> Starlette:
    return create_app(msgspec.convert(config, GatewayConfig),
                      build_plugin_manager(entry_points=False))


@pytest.fixture
async def keyless() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway()),
                                 base_url=f"http://{HOST}") as client:
        yield client


def refused(reply: httpx.Response, words: str) -> None:
    assert reply.status_code == 403, reply.text
    error = reply.json()["error"]  # the OpenAI envelope, as on every admin route
    assert error["type"] == "permission_error" and words in error["message"], error


@pytest.mark.parametrize("keys", [False, True], ids=["keyless", "keyed"])
async def test_a_cross_site_admin_request_is_refused_and_same_origin_works(keys: bool
                                                                          ) -> None:
    app = gateway(auth={"api_keys": ["client"], "admin_keys": ["root"]} if keys else {})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=f"http://{HOST}") as client:
        await _cross_site(client, keys)


async def _cross_site(client: httpx.AsyncClient, keys: bool) -> None:
    unload = "/admin/models/nothing/unload"
    # What a browser sends for the dashboard's own POST: same origin, so it is served
    # (404: no such model, after the checks).
    same = {**ADMIN, "origin": f"http://{HOST}", "sec-fetch-site": "same-origin"}
    assert (await client.post(unload, headers=same)).status_code == 404
    assert (await client.get("/admin/fleet", headers=same)).status_code == 200
    # A form or no-cors fetch from another site's page.
    refused(await client.post(unload, headers={**ADMIN, "sec-fetch-site": "cross-site",
                                               "origin": "https://evil.example"}),
            "another site")
    refused(await client.post(unload, headers={**ADMIN, "sec-fetch-site": "same-site"}),
            "another site")
    refused(await client.post(unload, headers={**ADMIN, "origin": "https://evil.example"}),
            "another origin")
    refused(await client.post(unload, headers={**ADMIN, "origin": "http://127.0.0.1:8080"}),
            "another origin")  # same host, another port: another origin
    refused(await client.post(unload, headers={**ADMIN, "origin": "null"}), "another origin")
    # Behind a TLS proxy that passes Host on: https on the default port is this origin.
    proxied = {**ADMIN, "host": "llm.example", "origin": "https://llm.example"}
    if not keys:
        proxied["host"] = HOST
        proxied["origin"] = f"https://{HOST.split(':')[0]}"
        proxied["x-forwarded-host"] = HOST.split(":")[0]
    assert (await client.post(unload, headers=proxied)).status_code == 404
    # Not a browser (no Origin, no Sec-Fetch-Site): curl, the CLI, the SDKs.
    assert (await client.post(unload, headers=ADMIN)).status_code == 404
    # Client routes are not admin routes: a cross-site page may call them.
    assert (await client.get("/v1/models", headers={
        "authorization": "Bearer client", "sec-fetch-site": "cross-site"})).status_code == 200


async def test_a_keyless_gateway_answers_only_hosts_it_knows(
        keyless: httpx.AsyncClient) -> None:
    for host in ("evil.example", "evil.example:31313", "127.0.0.1.evil.example"):
        refused(await keyless.get("/v1/models", headers={"host": host}), "allowed_hosts")
        refused(await keyless.get("/admin/fleet", headers={"host": host}), "allowed_hosts")
    anthropic = await keyless.post("/v1/messages", json={},
                                   headers={"host": "evil.example",
                                            "anthropic-version": "2023-06-01"})
    assert anthropic.status_code == 403 and anthropic.json()["type"] == "error"
    assert (await keyless.get("/health", headers={"host": "evil.example"})).status_code == 200
    machine = socket.gethostname()
    for host in (HOST, "10.1.2.3", "[::1]:31313", "localhost", "LOCALHOST:1",
                 "app.localhost", machine, f"{machine}:31313"):
        assert (await keyless.get("/v1/models", headers={"host": host})).status_code == 200, \
            host


async def test_allowed_hosts_names_more_and_keys_make_the_check_moot() -> None:
    app = gateway(gateway={"allowed_hosts": ["llm.example", "*.corp.example"]})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://llm.example") as client:
        for host, status in (("llm.example", 200), ("a.corp.example:8080", 200),
                             ("corp.example", 403), ("evil.example", 403)):
            assert (await client.get("/v1/models", headers={"host": host})).status_code \
                == status, host
    anyone = gateway(gateway={"allowed_hosts": ["*"]})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=anyone),
                                 base_url="http://evil.example") as client:
        assert (await client.get("/v1/models")).status_code == 200
    keyed = gateway(auth={"api_keys": ["client"]})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=keyed),
                                 base_url="http://evil.example") as client:
        assert (await client.get("/v1/models", headers={"authorization": "Bearer client"})
                ).status_code == 200


async def test_a_mounted_gateway_checks_its_admin_routes_under_the_prefix() -> None:
    inner = gateway(auth={"api_keys": ["client"], "admin_keys": ["root"]})
    app = Starlette(routes=[Mount("/llm", app=inner)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=f"http://{HOST}") as client:
        client_key = {"authorization": "Bearer client"}
        refused(await client.get("/llm/admin/fleet", headers=client_key), "admin key")
        assert (await client.get("/llm/admin/fleet", headers=ADMIN)).status_code == 200
        refused(await client.get("/llm/admin/fleet", headers={
            **ADMIN, "sec-fetch-site": "cross-site"}), "another site")
