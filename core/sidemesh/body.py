"""The downstream request body: streamed to the upstream, kept for replay up to a limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

__all__ = ["NO_BODY", "BodyNotReplayable", "RequestBody"]

#: unread bytes held before the downstream socket is paused.
HIGH_WATER = 256 * 1024


class BodyNotReplayable(Exception):
    """The body was larger than the replay buffer and part of it is already gone."""


class RequestBody:
    """Chunks of one request body as they arrive from the client.

    Each attempt reads the body with :meth:`chunks`. While the total stays within
    ``limit`` every chunk is kept, so a later attempt can send the body again; past the
    limit chunks are dropped once sent and the body is no longer replayable (the retry
    policy then gives up, as Envoy does for bodies over its buffer limit).
    """

    __slots__ = (
        "_chunks",
        "_first",
        "_pause",
        "_resume",
        "_unread",
        "_waiter",
        "chunked",
        "eof",
        "keep",
        "limit",
        "size",
    )

    def __init__(
        self,
        chunked: bool,
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None:
        self.chunked = chunked
        self._chunks: list[bytes] = []
        #: index of ``_chunks[0]`` in the whole body, once early chunks were dropped.
        self._first = 0
        self.size = 0
        self._unread = 0
        self.eof = False
        self.keep = True
        self.limit = HIGH_WATER
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume

    @property
    def replayable(self) -> bool:
        return self._first == 0 and (self.keep or not self._chunks)

    def kept(self) -> bytes | None:
        """The whole body, when it has arrived and was kept; otherwise ``None``."""
        if not self.eof or not self.replayable:
            return None
        return b"".join(self._chunks)

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        if self.size > limit:
            self.keep = False

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)
        self._unread += len(data)
        if self.size > self.limit:
            self.keep = False
        if self._unread > HIGH_WATER:
            self._pause()
        self._wake()

    def feed_eof(self) -> None:
        self.eof = True
        self._wake()

    def abort(self) -> None:
        """The client went away: wake a reader so it stops waiting."""
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The whole body from its first byte. Raises :class:`BodyNotReplayable` when a
        previous reader already consumed chunks that were not kept."""
        if self._first != 0:
            raise BodyNotReplayable("request body larger than the retry buffer")
        index = 0
        while True:
            position = index - self._first
            if position < len(self._chunks):
                chunk = self._chunks[position]
                index += 1
                self._unread = max(0, self._unread - len(chunk))
                if not self.keep:
                    del self._chunks[: position + 1]
                    self._first = index
                if self._unread <= HIGH_WATER // 2:
                    self._resume()
                yield chunk
                continue
            if self.eof:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            self._resume()
            await self._waiter
            self._waiter = None


def _nothing() -> None:
    return None


#: The body of every request without Content-Length or Transfer-Encoding (most GETs):
#: empty and complete, so one shared instance serves them all.
NO_BODY = RequestBody(False, _nothing, _nothing)
NO_BODY.eof = True
