"""The `cortex` commands that talk to a running gateway: `--url` and `--admin-key` before
or after the subcommand, CORTEX_URL and CORTEX_ADMIN_KEY, and a refusal that says which
variable or flag to set rather than which HTTP header."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from cortex.cli import main

from ..conftest import free_port
from ..serve_support import GatewayProcess, served

ADMIN, CLIENT = "the-admin-key", "a-client-key"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    neuron = [{"name": "absent", "endpoint": f"http://127.0.0.1:{free_port()}"}]
    with served(tmp_path_factory.mktemp("remote"), neuron, up=0,
                auth={"admin_keys": [ADMIN], "api_keys": [CLIENT]}) as process:
        yield process


def cortex(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    base = {"CORTEX_URL": "", "CORTEX_ADMIN_KEY": ""}
    result = CliRunner().invoke(main, list(args), env={**base, **(env or {})})
    return result.exit_code, result.output


def test_global_options_go_before_or_after_the_subcommand(gateway: GatewayProcess) -> None:
    for args in (["--url", gateway.url, "--admin-key", ADMIN, "status", "--json"],
                 ["status", "--json", "--url", gateway.url, "--admin-key", ADMIN],
                 ["--admin-key", ADMIN, "status", "--url", gateway.url, "--json"]):
        code, output = cortex(*args)
        assert code == 0 and '"nodes"' in output, (args, output)
    # The one nearer the subcommand wins.
    code, _ = cortex("--url", "http://127.0.0.1:1", "status", "--url", gateway.url,
                     "--json", "--admin-key", ADMIN)
    assert code == 0


def test_the_environment_stands_in_for_the_flags(gateway: GatewayProcess) -> None:
    code, output = cortex("status", "--json",
                          env={"CORTEX_URL": gateway.url, "CORTEX_ADMIN_KEY": ADMIN})
    assert code == 0 and '"nodes"' in output, output


def test_a_refusal_says_what_to_set(gateway: GatewayProcess) -> None:
    code, output = cortex("status", "--url", gateway.url)
    assert code == 1 and output == (f"Error: the gateway at {gateway.url} answered 401: it "
                                    "needs an admin key: set CORTEX_ADMIN_KEY (or pass "
                                    "--admin-key KEY)\n"), output
    code, output = cortex("--admin-key", "wrong", "status", "--url", gateway.url)
    assert code == 1 and "refused the admin key given (--admin-key or CORTEX_ADMIN_KEY)" \
        in output, output
    code, output = cortex("status", "--url", gateway.url, env={"CORTEX_ADMIN_KEY": CLIENT})
    assert code == 1 and "is a client key, and /admin needs one of its admin keys" in output, \
        output
    code, output = cortex("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "is it running? --url or CORTEX_URL name another" in output, output


def test_the_help_names_the_environment_variables() -> None:
    for args in ([], ["status"], ["reload"], ["load"]):
        _, output = cortex(*args, "--help")
        assert "CORTEX_URL" in output and "CORTEX_ADMIN_KEY" in output, (args, output)
    _, output = cortex("serve", "--help")
    for name in ("CORTEX_LISTEN", "CORTEX_METRICS_LISTEN", "CORTEX_CONFIG",
                 "CORTEX_NEURON_LISTEN"):
        assert name in output, output



def test_chat_takes_the_global_options_too(gateway: GatewayProcess) -> None:
    """The gateway is reached with the key (it answers: its one neuron is down, so it
    lists no models); without the key it refuses."""
    env = {"CORTEX_URL": "", "CORTEX_ADMIN_KEY": "", "CORTEX_API_KEY": ""}
    keyed = CliRunner().invoke(main, ["--url", gateway.url, "--admin-key", ADMIN, "chat"],
                               input="/bye\n", env=env)
    assert f"the gateway at {gateway.url} lists no models" in keyed.output, keyed.output
    bare = CliRunner().invoke(main, ["--url", gateway.url, "chat"], input="/bye\n", env=env)
    assert f"cannot list the models at {gateway.url}: 401" in bare.output, bare.output
