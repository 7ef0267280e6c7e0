"""A userspace stand-in for `tc netem delay D loss L`, for kernels built without netem.

iptables hands each packet crossing a namespace's eth0 to an NFQUEUE; this program,
started inside that namespace, holds every packet for the delay and then accepts it, or
drops it at the loss rate. The kernel's own TCP then sees what netem would give it:
a fixed one-way delay per packet, order kept, and random loss it must retransmit.

It speaks the nfnetlink_queue protocol on a raw netlink socket (the stdlib has no binding
and PyPI's NetfilterQueue needs a C library from Debian); only the packet id is copied
to userspace, never the payload. Prints "ready" once bound; on SIGTERM prints how many
packets it saw and dropped, as JSON, and exits.

Usage: python tests/netem.py QUEUE DELAY_S LOSS [SEED]
"""

from __future__ import annotations

import collections
import errno
import json
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_NO_ENOBUFS = 270, 5
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
# <linux/netfilter/nfnetlink_queue.h>
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND, NFQNL_COPY_META = 1, 1
NF_DROP, NF_ACCEPT = 0, 1

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid (host order)
_NFGEN = struct.Struct("!BBH")  # nfgenmsg: family, version, res_id (network order)
_ATTR = struct.Struct("=HH")  # nlattr: len, type


def _attr(kind: int, payload: bytes) -> bytes:
    size = _ATTR.size + len(payload)
    return _ATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


class Queue:
    """One bound NFQUEUE: packet ids in, verdicts out."""

    def __init__(self, number: int) -> None:
        self.number, self.seq = number, 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        # A burst beyond the buffer drops packets (TCP resends them) instead of failing recv.
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self._configure(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
        self._configure(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
        self._configure(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 1 << 16)))

    def _send(self, msg_type: int, flags: int, body: bytes) -> None:
        self.seq += 1
        kind = (NFNL_SUBSYS_QUEUE << 8) | msg_type
        nfgen = _NFGEN.pack(socket.AF_UNSPEC, 0, self.number)
        size = _HEADER.size + len(nfgen) + len(body)
        self.sock.send(_HEADER.pack(size, kind, NLM_F_REQUEST | flags, self.seq, 0) + nfgen + body)

    def _configure(self, body: bytes) -> None:
        self._send(NFQNL_MSG_CONFIG, NLM_F_ACK, body)
        data = self.sock.recv(1 << 16)
        _, kind, _, _, _ = _HEADER.unpack_from(data)
        error = struct.unpack_from("=i", data, _HEADER.size)[0] if kind == NLMSG_ERROR else 0
        if error:
            raise OSError(-error, f"nfnetlink_queue refused: {errno.errorcode.get(-error)}")

    def verdict(self, packet_id: int, verdict: int) -> None:
        self._send(NFQNL_MSG_VERDICT, 0, _attr(NFQA_VERDICT_HDR,
                                                struct.pack("!II", verdict, packet_id)))

    def packets(self) -> list[int]:
        """The ids of every packet queued so far (non-blocking)."""
        ids = []
        while True:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return ids
            at = 0
            while at + _HEADER.size <= len(data):
                size, kind, _, _, _ = _HEADER.unpack_from(data, at)
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    attr = at + _HEADER.size + _NFGEN.size
                    while attr + _ATTR.size <= at + size:
                        length, attr_type = _ATTR.unpack_from(data, attr)
                        if attr_type & 0x7FFF == NFQA_PACKET_HDR:
                            ids.append(struct.unpack_from("!I", data, attr + _ATTR.size)[0])
                            break
                        attr += (length + 3) & ~3
                at += (size + 3) & ~3


def main(number: int, delay: float, loss: float, seed: int) -> None:
    queue, rng = Queue(number), random.Random(seed)
    held: collections.deque[tuple[float, int]] = collections.deque()
    counts = {"queued": 0, "dropped": 0}

    def report(*_: object) -> None:
        print(json.dumps(counts), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    print("ready", flush=True)
    while True:
        wait = max(0.0, held[0][0] - time.monotonic()) if held else None
        select.select([queue.sock], [], [], wait)
        now = time.monotonic()
        for packet_id in queue.packets():
            counts["queued"] += 1
            if rng.random() < loss:
                counts["dropped"] += 1
                queue.verdict(packet_id, NF_DROP)
            else:
                held.append((now + delay, packet_id))
        while held and held[0][0] <= time.monotonic():
            queue.verdict(held.popleft()[1], NF_ACCEPT)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]),
         int(sys.argv[4]) if len(sys.argv) > 4 else 0)
