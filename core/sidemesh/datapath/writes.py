"""Small writes of one event-loop turn, sent back to back at the start of the next.

Each write to a loopback peer that sleeps in ``epoll_wait`` wakes it from inside the
writer's system call (an inter-processor interrupt, dear in a VM): the proxy spent 26 µs
of system time per request where the bare relay, whose peers are too busy to sleep,
spent 11. The requests of one loop turn are handled one after another, ~20 µs apart,
long enough for the peer to fall asleep between two of them; written together, the
first write wakes it and the rest find it awake (bench/README.md has the figures). A
write is held one loop turn at most; one larger than :data:`BATCH_LIMIT` goes out at
once, after what is held, so bodies keep the transport's flow control. Whoever closes a
transport whose held writes must arrive calls :meth:`WriteBatch.flush` first."""

from __future__ import annotations

import asyncio
from typing import Final

from sidemesh.datapath.per_loop import PerLoop

__all__ = ["BATCH_LIMIT", "WriteBatch", "write_batch"]

#: larger writes are not held: they are bodies, under the transport's flow control.
BATCH_LIMIT: Final = 16 * 1024


class WriteBatch:
    """The held writes of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._held: list[tuple[asyncio.Transport, bytes]] = []
        self._scheduled = False

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        if len(data) > BATCH_LIMIT:
            self.flush()
            transport.write(data)
            return
        self._held.append((transport, data))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write everything held now, in order."""
        held = self._held
        if held:
            self._held = []
            for transport, data in held:
                if not transport.is_closing():
                    transport.write(data)


#: the write batch of a loop: ``write_batch(loop)``.
write_batch: Final = PerLoop(WriteBatch)
