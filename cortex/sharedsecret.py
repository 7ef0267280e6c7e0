"""The neurons' shared secret in a config: `secret`, or `secret_file` read into it.

neuron.toml, cortex.toml's `[[neurons]]` and `[[discovery]]` tables all hold one; a
file is read when the config is decoded (at start and at each reload), so that the
value can live in one file (a Kubernetes Secret) rather than in the configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["load_secret"]


class _Holder(Protocol):
    secret: str | None
    secret_file: str | None


def _check_secret(secret: str | None) -> None:
    """An empty secret would silently mean none at all: refuse it."""
    if secret is not None and not secret.strip():
        raise ValueError("secret is empty, which would mean no secret at all: remove the "
                         "key for a neuron without one, or set a secret")


def _read_secret(path: str) -> str:
    """The shared secret held in `path` (surrounding whitespace, such as the newline an
    editor adds, is not part of it). A file that cannot be read or holds nothing is an
    error, as the keys file is: a secret that was meant must never silently be none."""
    try:
        secret = Path(path).expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"secret_file `{path}`: cannot read it ({reason})") from None
    if not secret:
        raise ValueError(f"secret_file `{path}` is empty, which would mean no secret at all")
    return secret


def load_secret(entry: _Holder) -> None:
    """Check `secret`, or read `secret_file` into it; then `secret_file` is None, so a
    copy (msgspec.structs.replace) does not read the file again."""
    if entry.secret is not None and entry.secret_file is not None:
        raise ValueError("set secret or secret_file, not both")
    _check_secret(entry.secret)
    if entry.secret_file is not None:
        entry.secret, entry.secret_file = _read_secret(entry.secret_file), None
