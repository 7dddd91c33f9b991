"""The downstream request body: streamed to the upstream, kept for replay up to a limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["NO_BODY", "BodyNotReplayable", "BodyReader", "RequestBody"]

#: unread bytes held before the downstream socket is paused.
HIGH_WATER = 256 * 1024


class BodyNotReplayable(Exception):
    """The body was larger than the replay buffer and part of it is already gone."""


class RequestBody:
    """Chunks of one request body as they arrive from the client.

    Each attempt reads the body with its own :meth:`reader`. While the total stays within
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
        "ended",
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
        #: ``time.monotonic()`` when the last byte arrived (0.0 until then, or if the
        #: client went away first): the access log's REQUEST_DURATION.
        self.ended = 0.0
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
        self.ended = time.monotonic()
        self._wake()

    def abort(self) -> None:
        """The client went away: wake a reader so it stops waiting."""
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def reader(self) -> BodyReader:
        """A reader of the whole body from its first byte (see :class:`BodyReader`)."""
        return BodyReader(self)


class BodyReader:
    """Reads a request body from its first byte, one chunk per :meth:`next` call (a
    plain class rather than an async generator: those cannot be compiled)."""

    __slots__ = ("_body", "_index")

    def __init__(self, body: RequestBody) -> None:
        self._body = body
        self._index = 0

    async def next(self) -> bytes | None:
        """The next chunk, or ``None`` at the end of the body. Raises
        :class:`BodyNotReplayable` when a previous reader already consumed chunks that
        were not kept."""
        body = self._body
        if self._index == 0 and body._first != 0:
            raise BodyNotReplayable("request body larger than the retry buffer")
        while True:
            position = self._index - body._first
            if position < len(body._chunks):
                chunk = body._chunks[position]
                self._index += 1
                body._unread = max(0, body._unread - len(chunk))
                if not body.keep:
                    del body._chunks[: position + 1]
                    body._first = self._index
                if body._unread <= HIGH_WATER // 2:
                    body._resume()
                return chunk
            if body.eof:
                return None
            body._waiter = asyncio.get_running_loop().create_future()
            body._resume()
            await body._waiter
            body._waiter = None


def _nothing() -> None:
    return None


#: The body of every request without Content-Length or Transfer-Encoding (most GETs):
#: empty and complete, so one shared instance serves them all.
NO_BODY = RequestBody(False, _nothing, _nothing)
NO_BODY.eof = True
