"""API keys on the gateway: client keys, admin keys, per-key rate limit, both dialects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cortex import build_plugin_manager
from cortex.config import ApiKey, AuthConfig, GatewayConfig, ModelProfile
from cortex.errors import AuthenticationFailed, PermissionDenied, RateLimited
from cortex.gateway import create_app
from cortex.gateway.auth import KeyRing


def test_keyring_accepts_config_file_and_environment(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nfile-key  # ops\n\n")
    monkeypatch.setenv("CORTEX_API_KEYS", "env-key, other")
    ring = KeyRing(AuthConfig(api_keys=["config-key"], api_keys_file=str(keys),
                              admin_keys=["root"]))
    for key in (b"config-key", b"file-key", b"env-key", b"other", b"root"):
        ring.check(key, admin=False)
    ring.check(b"root", admin=True)
    with pytest.raises(PermissionDenied):
        ring.check(b"file-key", admin=True)
    with pytest.raises(AuthenticationFailed):
        ring.check(b"nope", admin=False)
    with pytest.raises(AuthenticationFailed):
        ring.check(None, admin=False)


def test_no_keys_means_open() -> None:
    ring = KeyRing(AuthConfig())
    ring.check(None, admin=True)
    ring.check(b"anything", admin=False)


def test_requests_per_minute_per_key() -> None:
    now = [1000.0]
    ring = KeyRing(AuthConfig(api_keys=["a", "b"], requests_per_minute=2),
                   clock=lambda: now[0])
    ring.check(b"a", admin=False)
    ring.check(b"a", admin=False)
    with pytest.raises(RateLimited) as limited:
        ring.check(b"a", admin=False)
    assert limited.value.headers()["retry-after"] == "60"
    ring.check(b"b", admin=False)  # another key has its own budget
    now[0] += 60.5
    ring.check(b"a", admin=False)


@pytest.fixture
def client() -> Iterator[TestClient]:
    config = GatewayConfig(auth=AuthConfig(api_keys=["client-key"], admin_keys=["admin-key"]))
    app = create_app(config, build_plugin_manager(entry_points=False))
    with TestClient(app) as test_client:
        yield test_client


def test_gateway_needs_a_key_on_every_route_but_health(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    missing = client.get("/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models", headers={"authorization": "Bearer client-key"}
                      ).status_code == 200
    assert client.get("/v1/models", headers={"x-api-key": "client-key"}).status_code == 200
    assert client.get("/v1/models", headers={"authorization": "Bearer wrong"}
                      ).status_code == 401


def test_admin_routes_need_an_admin_key(client: TestClient) -> None:
    assert client.get("/admin/fleet", headers={"authorization": "Bearer client-key"}
                      ).status_code == 403
    assert client.get("/admin/fleet").status_code == 401
    assert client.get("/admin/fleet", headers={"authorization": "Bearer admin-key"}
                      ).status_code == 200


def test_anthropic_paths_get_the_anthropic_envelope(client: TestClient) -> None:
    reply = client.post("/v1/messages", json={})
    assert reply.status_code == 401
    body = reply.json()
    assert body == {"type": "error", "error": {
        "type": "authentication_error", "message": body["error"]["message"]}}
    assert "API key" in body["error"]["message"]


def test_per_key_allow_list_and_limit() -> None:
    now = [0.0]
    ring = KeyRing(AuthConfig(requests_per_minute=100, keys=[
        ApiKey(key="team-a", models=["small"], requests_per_minute=1),
        ApiKey(key="team-b")]), clock=lambda: now[0])
    assert ring.check(b"team-a", admin=False) == frozenset({"small"})
    with pytest.raises(RateLimited):
        ring.check(b"team-a", admin=False)  # its own limit, not the global 100
    assert ring.check(b"team-b", admin=False) is None
    ring.check(b"team-b", admin=False)


def test_gateway_enforces_a_keys_model_allow_list() -> None:
    profiles = [ModelProfile(id="small", source="synthetic:", harness="synthetic",
                             aliases=["tiny"]),
                ModelProfile(id="big", source="synthetic:", harness="synthetic")]
    config = GatewayConfig(auth=AuthConfig(keys=[ApiKey(key="team-a", models=["small"])]))
    app = create_app(config, build_plugin_manager(entry_points=False), profiles=profiles)
    headers = {"authorization": "Bearer team-a"}
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with TestClient(app) as client:
        refused = client.post("/v1/chat/completions", headers=headers,
                              json={**body, "model": "big"})
        assert refused.status_code == 403
        assert "may not use model `big`" in refused.json()["error"]["message"]
        for name in ("small", "tiny"):  # the id and its alias pass the check
            passed = client.post("/v1/chat/completions", headers=headers,
                                 json={**body, "model": name})
            assert passed.status_code == 503  # allowed; no neuron to serve it here
        anthropic = client.post("/v1/messages", headers=headers, json={
            "model": "big", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})
        assert anthropic.status_code == 403
        assert anthropic.json()["error"]["type"] == "permission_error"
