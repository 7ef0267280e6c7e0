"""API keys on the gateway: client keys, admin keys, per-key rate limit, both dialects;
keys fail closed (a keys file that lost its keys refuses start and reload), and an open
gateway is either declared or warned about."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from cortex import build_plugin_manager
from cortex.cli import main
from cortex.config import (
    ApiKey,
    AuthConfig,
    GatewayConfig,
    ModelProfile,
    load_gateway_config,
    load_neuron_config,
)
from cortex.errors import AuthenticationFailed, ConfigError, PermissionDenied, RateLimited
from cortex.gateway import create_app
from cortex.gateway.auth import KeyRing

from ..conftest import ROOT, free_port
from ..serve_support import GatewayProcess, served

#: A neuron that is never up: `cortex serve` needs at least one in its config.
ABSENT = [{"name": "absent", "endpoint": f"http://127.0.0.1:{free_port()}"}]


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


# --- fail closed --------------------------------------------------------------------------

def test_a_keys_file_that_lost_its_keys_is_a_config_error(tmp_path: Path) -> None:
    empty = tmp_path / "keys.txt"
    empty.write_text("# nobody yet\n\n   \n")
    with pytest.raises(ConfigError, match="holds no key"):
        KeyRing(AuthConfig(api_keys=["other"], api_keys_file=str(empty)))
    for unreadable in (tmp_path / "missing.txt", tmp_path):  # absent; a directory
        with pytest.raises(ConfigError, match="cannot read it"):
            KeyRing(AuthConfig(api_keys_file=str(unreadable)))
    with pytest.raises(ConfigError, match="holds no key"):
        create_app(GatewayConfig(auth=AuthConfig(api_keys_file=str(empty))),
                   build_plugin_manager(entry_points=False))


def test_open_is_explicit_and_contradicting_keys_is_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cortex.gateway.auth"):
        KeyRing(AuthConfig()).announce("0.0.0.0:31313")
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "the gateway is OPEN" in caplog.text and "0.0.0.0:31313" in caplog.text
        caplog.clear()
        ring = KeyRing(AuthConfig(open=True))
        ring.check(None, admin=True)
        ring.announce("0.0.0.0:31313")
        assert [r.levelno for r in caplog.records] == [logging.INFO]
    with pytest.raises(ConfigError, match="open = true, but keys are configured"):
        KeyRing(AuthConfig(open=True, admin_keys=["root"]))


def test_an_empty_neuron_secret_is_refused(tmp_path: Path) -> None:
    neuron = tmp_path / "neuron.toml"
    neuron.write_text('secret = ""\n')
    with pytest.raises(ConfigError, match="secret is empty"):
        load_neuron_config(neuron)
    gateway = tmp_path / "cortex.toml"
    gateway.write_text('[[neurons]]\nname = "a"\nendpoint = "http://a:13131"\nsecret = " "\n')
    with pytest.raises(ConfigError, match=r"neurons\[a\]: secret is empty"):
        load_gateway_config(gateway)


def test_config_check_reads_the_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    config = tmp_path / "cortex.toml"
    neuron = '[[neurons]]\nname = "n"\nendpoint = "http://127.0.0.1:1"\n'
    config.write_text(f'[auth]\napi_keys_file = "{keys}"\n{neuron}')
    runner = CliRunner()
    missing = runner.invoke(main, ["config", "check", str(config)])
    assert missing.exit_code == 1 and "cannot read it" in missing.output, missing.output
    keys.write_text("\n")
    empty = runner.invoke(main, ["config", "check", str(config)])
    assert empty.exit_code == 1 and "holds no key" in empty.output, empty.output
    keys.write_text("a-key\n")
    fine = runner.invoke(main, ["config", "check", str(config)])
    assert fine.exit_code == 0 and "keys required" in fine.output, fine.output
    config.write_text(neuron)
    assert "OPEN: no keys" in runner.invoke(main, ["config", "check", str(config)]).output


def test_serve_refuses_to_start_on_an_empty_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# emptied by mistake\n")
    gateway = GatewayProcess.configured(tmp_path, ABSENT, auth={"api_keys_file": str(keys)})
    try:
        assert gateway.proc.wait(60) != 0
    finally:
        gateway.stop()
    assert "holds no key" in gateway.log() and "Traceback" not in gateway.log(), gateway.log()


def test_a_reload_that_would_lose_the_keys_is_refused_and_the_old_keys_stay(
        tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("client-key\n")
    env = {**os.environ, "CORTEX_ADMIN_KEY": "admin-key"}
    with served(tmp_path, ABSENT, up=0,
                auth={"api_keys_file": str(keys), "admin_keys": ["admin-key"]}
                ) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        keyed = {"authorization": "Bearer client-key"}
        assert client.get("/v1/models", headers=keyed).status_code == 200
        keys.write_text("")
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait(lambda _: "SIGHUP: configuration not reloaded" in gw.log(), "SIGHUP is refused")
        assert "holds no key" in gw.log()
        out = subprocess.run([sys.executable, "-m", "cortex.cli", "reload", "--url", gw.url],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert out.returncode == 1 and "holds no key" in out.stderr, out.stdout + out.stderr
        keys.unlink()
        out = subprocess.run([sys.executable, "-m", "cortex.cli", "reload", "--url", gw.url],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert out.returncode == 1 and "cannot read it" in out.stderr, out.stdout + out.stderr
        # The old keys still hold: still closed, still open to its own key.
        assert client.get("/v1/models", headers=keyed).status_code == 200
        refused = client.get("/v1/models")
        assert refused.status_code == 401
        assert str(tmp_path) not in refused.text  # no path to a client without a key
        assert client.post("/v1/messages", json={}).status_code == 401
        assert client.get("/health").status_code == 200
        assert "the gateway is OPEN" not in gw.log()


def test_an_open_gateway_says_so_at_start_and_at_every_reload(tmp_path: Path) -> None:
    with served(tmp_path, ABSENT, up=0) as gw:
        gw.wait(lambda _: gw.log().count("the gateway is OPEN") == 1, "the start warns")
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait(lambda _: gw.log().count("the gateway is OPEN") == 2, "the reload warns")
    with served(tmp_path, ABSENT, up=0, auth={"open": True}) as gw:
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait(lambda _: "SIGHUP: reloaded" in gw.log(), "the reload")
        assert "the gateway is OPEN" not in gw.log()
        assert gw.log().count("open = true") == 2
