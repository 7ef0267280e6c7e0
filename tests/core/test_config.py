"""Config errors name the file, the key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.config import load_gateway_config, load_neuron_config, parse_bytes
from cortex.errors import ConfigError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_neuron_runs_with_no_config() -> None:
    config = load_neuron_config(None)
    assert config.listen == "0.0.0.0:13131"
    assert config.node_name


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "neuron.toml", 'listen = "127.0.0.1:1"\nlisten_port = 5\n')
    with pytest.raises(ConfigError) as err:
        load_neuron_config(path)
    assert str(err.value) == f"{path}: (top level): Object contains unknown field listen_port"


def test_wrong_type_in_nested_table(tmp_path: Path) -> None:
    path = write(tmp_path, "neuron.toml", '[[preload]]\nid = "a"\nsource = "a.gguf"\n'
                                          'n_ctx = "big"\n')
    with pytest.raises(ConfigError) as err:
        load_neuron_config(path)
    assert str(err.value) == f"{path}: preload[a].n_ctx: Expected int, got str"


def test_semantic_errors_carry_the_key(tmp_path: Path) -> None:
    bad_listen = write(tmp_path, "a.toml", 'listen = "nowhere"\n')
    with pytest.raises(ConfigError, match=r"a\.toml: .*listen must be host:port"):
        load_neuron_config(bad_listen)
    both = write(tmp_path, "b.toml", '[[preload]]\nid = "a"\nsource = "x"\n'
                                     'chat_format = "gemma"\nchat_template = "{{x}}"\n')
    with pytest.raises(ConfigError, match=r"b\.toml: preload\[a\]: .*not both"):
        load_neuron_config(both)
    small = write(tmp_path, "c.toml", '[[preload]]\nid = "a"\nsource = "x"\nn_ctx = 0\n')
    with pytest.raises(ConfigError, match=r"c\.toml: preload\[a\]\.n_ctx: Expected `int` >= 1"
                       .replace("`", "")):
        load_neuron_config(small)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.toml", "listen = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml: invalid TOML"):
        load_neuron_config(broken)
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load_neuron_config(tmp_path / "missing.toml")


def test_gateway_config_reads_models_file_and_rejects_duplicate_ids(tmp_path: Path) -> None:
    write(tmp_path, "models.toml", '[[models]]\nid = "a"\nsource = "x"\naliases = ["b"]\n'
                                   '[[models]]\nid = "b"\nsource = "y"\n')
    path = write(tmp_path, "cortex.toml", 'models = "models.toml"\n[[neurons]]\n'
                                          'name = "n1"\nendpoint = "http://127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match=r"models\.toml: models\[1\]\.id: `b` is already used"):
        load_gateway_config(path)


def test_parse_bytes() -> None:
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("512 MB") == 512_000_000
    assert parse_bytes(1024) == 1024
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


def test_config_check_refuses_an_n_batch_no_node_could_load(tmp_path: Path) -> None:
    """2^31 passed once, then crashed every neuron it was loaded on (llama_batch_init
    took it as a negative int32)."""
    import subprocess
    import sys

    write(tmp_path, "models.toml", '[[models]]\nid = "a"\nsource = "bundled:gemma3-270m"\n'
                                   'n_batch = 2147483648\n')
    path = write(tmp_path, "cortex.toml", 'models = "models.toml"\n[[neurons]]\n'
                                          'name = "n1"\nendpoint = "http://127.0.0.1:1"\n')
    check = subprocess.run([sys.executable, "-m", "cortex.cli", "config", "check", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0
    assert f"{tmp_path / 'models.toml'}: models[a].n_batch: Expected int <= 65536" in \
        check.stdout + check.stderr
    write(tmp_path, "models.toml", '[[models]]\nid = "a"\nsource = "bundled:gemma3-270m"\n'
                                   'n_batch = 65536\n')
    assert load_gateway_config(path)[1][0].n_batch == 65536


def test_a_profile_cannot_ask_more_threads_than_ggml_has(tmp_path: Path) -> None:
    """100,000 threads exhausted a node's memory as ggml made them, and the neuron died."""
    path = write(tmp_path, "neuron.toml", '[[preload]]\nid = "a"\nsource = "x"\n'
                                          'n_threads = 100000\n')
    with pytest.raises(ConfigError) as err:
        load_neuron_config(path)
    assert str(err.value) == f"{path}: preload[a].n_threads: Expected int <= 512"
    path.write_text('[[preload]]\nid = "a"\nsource = "x"\nn_threads = 512\n')
    assert load_neuron_config(path).preload[0].n_threads == 512
