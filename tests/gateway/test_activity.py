"""GET /admin/requests: the last finished requests, newest first, behind the admin key,
with a client's made-up model name cut short (it is kept in memory)."""

from __future__ import annotations

import pytest

from cortex.gateway.activity import ACTIVITY_SIZE, MAX_MODEL

from ..gateway_support import running_gateway

pytestmark = pytest.mark.anyio

CLIENT, ADMIN = "activity-client-key", "activity-admin-key"


async def test_requests_are_listed_newest_first_for_admins_only() -> None:
    auth = {"api_keys": [CLIENT], "admin_keys": [ADMIN]}
    async with running_gateway([], [], auth=auth) as gw:
        client = {"authorization": f"Bearer {CLIENT}"}
        admin = {"authorization": f"Bearer {ADMIN}"}
        long_name = "x" * 100_000
        for model in ("first", long_name, "last"):
            reply = await gw.client.post("/v1/chat/completions", headers=client, json={
                "model": model, "messages": [{"role": "user", "content": "Hi"}]})
            assert reply.status_code == 404
        assert (await gw.client.get("/admin/requests", headers=client)).status_code == 403
        listed = (await gw.client.get("/admin/requests", headers=admin)).json()["requests"]
        assert [r["model"][:5] for r in listed] == ["last", "xxxxx", "first"]
        assert all(r["status"] == 404 and r["node"] is None for r in listed)
        assert len(listed[1]["model"]) == MAX_MODEL + 3  # cut, marked with "..."
        assert listed[0]["finished_at"] >= listed[2]["finished_at"]
        only = (await gw.client.get("/admin/requests?limit=1", headers=admin)).json()
        assert [r["model"] for r in only["requests"]] == ["last"]
        for bad in ("0", str(ACTIVITY_SIZE + 1), "many"):
            refused = await gw.client.get(f"/admin/requests?limit={bad}", headers=admin)
            assert refused.status_code == 400 and "limit" in refused.text
