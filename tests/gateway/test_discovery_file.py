"""`[[discovery]] source = "file"`: a TOML or JSON list that another tool rewrites under a
running `cortex serve`, beside the static `[[neurons]]`; a half-written file keeps the
last good set."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import msgspec

from ..discovery_support import discovering_gateway, fleet, nodes, wait_for
from ..serve_support import synthetic_neuron


def replace(path: Path, text: str) -> None:
    """Write as consul-template does: a new file renamed over the old one."""
    fresh = path.with_name(f".{path.name}.tmp")
    fresh.write_text(text)
    os.replace(fresh, path)


def toml_list(*entries: tuple[str, str]) -> str:
    return "".join(f'[[neurons]]\nname = "{name}"\nendpoint = "{url}"\n\n'
                   for name, url in entries)


def seen(gateway: Any) -> dict[str, tuple[str, bool, str]]:
    """Each node that takes work: (endpoint, up, origin)."""
    return {name: (n["endpoint"], n["up"], n["origin"]) for name, n in nodes(gateway).items()
            if not n["leaving"]}


def test_files_rewritten_under_a_running_gateway_beside_the_static_list(
        tmp_path: Path) -> None:
    neurons = [synthetic_neuron(tmp_path) for _ in range(3)]
    n1, n2, n3 = neurons
    listing, extra = tmp_path / "neurons.toml", tmp_path / "more.json"
    listing.write_text(toml_list(("a", n1.url)))
    extra.write_text(json.dumps({"neurons": [{"name": "c", "endpoint": n3.url}]}))
    from_toml, from_json = f"file:{listing}", f"file:{extra}"
    gw = discovering_gateway(tmp_path, [
        {"source": "file", "linger": 0, "options": {"path": str(listing), "interval": 0.2}},
        {"source": "file", "linger": 0, "options": {"path": str(extra), "interval": 0.2}},
    ], neurons=[{"name": "static", "endpoint": n2.url}])
    try:
        wait_for(lambda: seen(gw) == {"static": (n2.url, True, "config"),
                                      "a": (n1.url, True, from_toml),
                                      "c": (n3.url, True, from_json)},
                 "the static node and both files' nodes are up", log=gw.log)
        replace(listing, toml_list(("a", n1.url), ("b", n3.url)))
        wait_for(lambda: seen(gw).get("b") == (n3.url, True, from_toml),
                 "b joined", log=gw.log)
        # Half-written: the last good set stays, and the log says why.
        failures = fleet(gw)["discovery"][0]["failures"]
        listing.write_text('[[neurons]]\nname = "a"\nendpoint = ')
        wait_for(lambda: fleet(gw)["discovery"][0]["failures"] > failures,
                 "the broken file was read", log=gw.log)
        assert set(seen(gw)) == {"static", "a", "b", "c"}
        assert f"discovery {from_toml} failed, keeping its 2 nodes: {listing}" in gw.log()
        # Rewritten in place, without a: a is dropped; a JSON list moves c elsewhere.
        listing.write_text(toml_list(("b", n3.url)))
        extra.write_text(json.dumps([{"name": "c", "endpoint": n1.url},
                                     {"name": "static", "endpoint": n1.url}]))
        wait_for(lambda: seen(gw) == {"static": (n2.url, True, "config"),
                                      "b": (n3.url, True, from_toml),
                                      "c": (n1.url, True, from_json)},
                 "a left and c moved", log=gw.log)
        assert f"{from_json} found neuron static, a name config already has" in gw.log()
        assert not fleet(gw)["discovery"][0]["failing"]
    finally:
        gw.stop()
        for neuron in neurons:
            neuron.stop()


def test_config_check_refuses_an_unknown_source_or_a_bad_option(
        tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cortex.cli import main

    config = tmp_path / "cortex.toml"
    runner = CliRunner()
    config.write_text('[[discovery]]\nsource = "consul"\n')
    unknown = runner.invoke(main, ["config", "check", str(config)])
    assert unknown.exit_code == 1
    assert f"{config}: discovery[0].source: unknown discovery source `consul` " \
           "(available: dns, file" in unknown.output, unknown.output
    config.write_text('[[discovery]]\nsource = "dns"\n[discovery.options]\nnam = "x"\n')
    misspelt = runner.invoke(main, ["config", "check", str(config)])
    assert misspelt.exit_code == 1
    assert f"{config}: discovery[0].options: Object contains unknown field `nam`" \
        in misspelt.output, misspelt.output
    config.write_text('[[discovery]]\nsource = "file"\n[discovery.options]\npath = "x"\n')
    fine = runner.invoke(main, ["config", "check", str(config)])
    assert fine.exit_code == 0 and "1 discovery sources" in fine.output, fine.output


def test_a_reload_keeps_unchanged_sources_running_and_replaces_changed_ones(
        tmp_path: Path) -> None:
    neurons = [synthetic_neuron(tmp_path) for _ in range(2)]
    n1, n2 = neurons
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    first.write_text(toml_list(("a", n1.url)))
    second.write_text(toml_list(("b", n2.url)))
    kept = {"source": "file", "linger": 3600, "options": {"path": str(first),
                                                          "interval": 0.2}}
    gw = discovering_gateway(tmp_path, [kept])
    [config] = tmp_path.glob("cortex-*.toml")
    try:
        wait_for(lambda: set(seen(gw)) == {"a"}, "a joined", log=gw.log)
        table = msgspec.toml.decode(config.read_bytes())
        table["discovery"] = [kept, {"source": "file", "linger": 0, "options": {
            "path": str(second), "interval": 0.2}}]
        config.write_bytes(msgspec.toml.encode(table))
        assert httpx.post(f"{gw.url}/admin/reload", timeout=30).status_code == 200
        wait_for(lambda: set(seen(gw)) == {"a", "b"}, "b joined", log=gw.log)
        # Unchanged, the first source kept what it had found: `a` never left.
        assert "neuron a left" not in gw.log() and gw.log().count("neuron a (") == 1
        # Changed (its path), it starts again from nothing: `a` leaves at once.
        kept["options"] = {"path": str(second), "interval": 0.2}
        table["discovery"] = [kept]
        config.write_bytes(msgspec.toml.encode(table))
        assert httpx.post(f"{gw.url}/admin/reload", timeout=30).status_code == 200
        wait_for(lambda: set(seen(gw)) == {"b"}, "a left with its source", log=gw.log)
    finally:
        gw.stop()
        for neuron in neurons:
            neuron.stop()
