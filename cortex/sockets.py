"""Listen addresses: checked the way `cortex config check` checks them, and bound before a
server starts, so that a mistake or a busy port is one line rather than a server that
says it listens and then dies in its own traceback.

Both daemons use it: the gateway (`cortex serve`, its metrics and its embedded neuron)
and `neuron serve`.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from cortex.config import split_listen

if TYPE_CHECKING:
    from hypercorn.config import Config

__all__ = ["BACKLOG", "bind", "cannot_listen", "check_listen", "hypercorn_config"]

#: Connections the kernel queues before the server accepts them (hypercorn's default).
BACKLOG = 100


def check_listen(listen: str) -> tuple[str, int]:
    """(host, port) of `host:port`, or ValueError saying what is wrong: no port, a port
    outside 1-65535, or a host that is neither an address nor a name that resolves."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.strip().isdigit():
        raise ValueError(f"`{listen}` is not host:port (for example 127.0.0.1:31313, "
                         "0.0.0.0:31313 for every interface, [::1]:31313)")
    if not 0 < int(port) < 65536:
        raise ValueError(f"`{listen}`: port {int(port)} is not between 1 and 65535")
    host, number = split_listen(listen)
    try:
        socket.getaddrinfo(host, number, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ValueError(f"`{listen}`: `{host}` is neither an address nor a name that "
                         "resolves here") from None
    return host, number


def bind(listen: str) -> socket.socket:
    """A TCP socket bound to `listen` and listening (connections wait in the backlog
    until the server accepts them), as hypercorn would make it; OSError when the
    address is taken or not this machine's, ValueError when it is no address."""
    host, port = check_listen(listen)
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def cannot_listen(name: str, listen: str, exc: BaseException) -> str:
    """The one line for a server that could not bind: what, where, and why."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    hint = " (another process listens there: stop it, or choose another port)" \
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE else ""
    return f"{name} cannot listen on {listen}: {reason.lower()}{hint}"


def hypercorn_config(sock: socket.socket, listen: str) -> Config:
    """hypercorn settings that serve on `sock` (from `bind`) rather than binding anew."""
    from hypercorn.config import Config, Sockets

    class Bound(Config):
        def create_sockets(self) -> Sockets:
            return Sockets([], [sock], [])

    config = Bound()
    config.bind = [listen]
    config.backlog = BACKLOG
    return config
