"""Span export in batches, from a background asyncio task: Zipkin v2 JSON here, OTLP in
:mod:`.otlp`, both on the same queue and back-off.

The request path only appends to a bounded queue (:meth:`BatchExporter.submit` is sync
and never waits): a slow or unreachable collector costs dropped spans, counted in
``sidemesh_tracing_spans_dropped_total``, never request latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

import httpx

from .metrics import SPANS_DROPPED, SPANS_EXPORTED
from .spans import SpanRecord

__all__ = [
    "ZIPKIN_PATH",
    "BatchExporter",
    "ExporterSettings",
    "ZipkinExporter",
    "acquire_exporter",
    "release_exporter",
    "zipkin_url",
]

log = logging.getLogger("sidemesh.tracing")

#: Bound on one POST, so a collector that accepts but never answers cannot pin a batch.
POST_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
#: after a failed export, batches are dropped unsent for this long, doubling per failure.
RETRY_MIN = 0.5
RETRY_MAX = 30.0
#: Bound on shutdown: a final POST plus some slack.
CLOSE_TIMEOUT = 6.0
ZIPKIN_PATH = "/api/v2/spans"

#: Sends one batch; returns ``None`` when the collector took it, else what went wrong.
Sender = Callable[[list[SpanRecord]], Awaitable[str | None]]


def zipkin_url(endpoint: str) -> str:
    """The collector's POST URL: a base URL (``http://zipkin:9411``) gets Zipkin's path,
    a full one (``http://zipkin:9411/api/v2/spans``, as ``OTEL_EXPORTER_ZIPKIN_ENDPOINT``
    is written) is kept."""
    base = endpoint.rstrip("/")
    return base if base.endswith(ZIPKIN_PATH) else base + ZIPKIN_PATH


@dataclass(frozen=True, slots=True)
class ExporterSettings:
    endpoint: str
    batch_size: int = 100
    flush_interval: float = 1.0
    max_queue: int = 10000


class BatchExporter:
    """Queues finished spans and sends them in batches; subclasses say how to send."""

    #: the ``exporter`` label of the plugin's counters.
    kind: ClassVar[str]

    def __init__(self, settings: ExporterSettings) -> None:
        self.settings = settings
        self._queue: deque[SpanRecord] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False
        self._backoff = 0.0
        self._retry_at = 0.0
        self._closing = False
        self.refs = 0
        self.key: tuple[ExporterSettings, asyncio.AbstractEventLoop | None] = (settings, None)

    @property
    def target(self) -> str:
        """The collector, as log lines name it."""
        return self.settings.endpoint

    def _session(self) -> contextlib.AbstractAsyncContextManager[Sender]:
        """A sender for one run of the export task (or one flush)."""
        raise NotImplementedError

    async def _stop(self) -> None:
        """Release what the exporter holds, once the queue is drained."""

    def submit(self, span: SpanRecord) -> None:
        """Queue one finished span. Sync, never waits; drops (and counts) when full."""
        if len(self._queue) >= self.settings.max_queue:
            SPANS_DROPPED.labels(self.kind, "queue_full").inc()
            return
        self._queue.append(span)
        self._kick(len(self._queue) >= self.settings.batch_size)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _kick(self, full: bool) -> None:
        """Make sure the export task runs, and wake it when a batch is full."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = self._task
        if task is not None and not task.done():
            if full and self._wake is not None and self._loop is not None:
                if self._loop is loop:
                    self._wake.set()
                else:
                    # The task lives on another loop (another thread): wake it safely.
                    self._loop.call_soon_threadsafe(self._wake.set)
            return
        self._loop = loop
        self._wake = asyncio.Event()
        if full:
            self._wake.set()
        self._task = loop.create_task(self._run(), name=f"sidemesh-tracing-{self.kind}")

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        async with self._session() as send:
            while not self._closing:
                if len(self._queue) < self.settings.batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self.settings.flush_interval)
                wake.clear()
                await self._drain(send)
            await self._drain(send)

    async def _drain(self, send: Sender) -> None:
        while self._queue:
            size = min(self.settings.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(size)]
            await self._post(send, batch)

    async def _post(self, send: Sender, batch: list[SpanRecord]) -> None:
        if self._failing and time.monotonic() < self._retry_at:
            # The collector is down: drop without serialising, and only try it again
            # after a back-off, so a dead collector costs the proxy next to nothing.
            SPANS_DROPPED.labels(self.kind, "export_failed").inc(len(batch))
            return
        try:
            problem = await send(batch)
        except asyncio.CancelledError:
            SPANS_DROPPED.labels(self.kind, "export_failed").inc(len(batch))
            raise
        if problem is None:
            SPANS_EXPORTED.labels(self.kind).inc(len(batch))
            if self._failing:
                log.info("%s collector %s reachable again", self.kind, self.target)
            self._failing = False
            self._backoff = 0.0
            return
        SPANS_DROPPED.labels(self.kind, "export_failed").inc(len(batch))
        self._backoff = min(max(self._backoff * 2, RETRY_MIN), RETRY_MAX)
        self._retry_at = time.monotonic() + self._backoff
        # One warning per outage, not one per batch.
        if not self._failing:
            log.warning("%s export to %s failed (%s); dropping spans until it recovers",
                        self.kind, self.target, problem)
        self._failing = True

    async def flush(self) -> None:
        """Send everything queued now (used on shutdown and by tests)."""
        async with self._session() as send:
            await self._drain(send)

    async def close(self) -> None:
        """Send what is queued and stop the background task; bounded by one POST's
        timeout, after which the task is cancelled (its spans counted as dropped)."""
        task, self._task = self._task, None
        if task is None or task.done():
            await self.flush()
            await self._stop()
            return
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        try:
            await asyncio.wait_for(task, CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("%s export to %s did not finish in time on shutdown", self.kind,
                        self.target)
        finally:
            self._closing = False
        # Spans submitted while the final drain was running.
        await self.flush()
        await self._stop()


class ZipkinExporter(BatchExporter):
    """POSTs Zipkin v2 JSON to the collector's ``/api/v2/spans``."""

    kind = "zipkin"

    def __init__(self, settings: ExporterSettings) -> None:
        super().__init__(settings)
        self.url = zipkin_url(settings.endpoint)

    @property
    def target(self) -> str:
        return self.url

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Sender]:
        async with httpx.AsyncClient(timeout=POST_TIMEOUT) as client:

            async def send(batch: list[SpanRecord]) -> str | None:
                body = json.dumps([span.to_zipkin() for span in batch], separators=(",", ":"))
                try:
                    reply = await client.post(
                        self.url, content=body, headers={"content-type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    return f"{type(exc).__name__}: {exc}"
                return None if reply.status_code < 300 else f"HTTP {reply.status_code}"

            yield send


_exporters: dict[tuple[ExporterSettings, asyncio.AbstractEventLoop | None], BatchExporter] = {}


def _current_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def acquire_exporter(
    settings: ExporterSettings, make: Callable[[ExporterSettings], BatchExporter]
) -> BatchExporter:
    """The exporter for these settings on this event loop (``make`` builds it the first
    time): every route (and every config generation) of a sidecar sending to the same
    collector shares one queue and one task. Keyed by loop too, so two sidecars in one
    process (tests) stay independent."""
    key = (settings, _current_loop())
    exporter = _exporters.get(key)
    if exporter is None:
        exporter = _exporters[key] = make(settings)
        exporter.key = key
    exporter.refs += 1
    return exporter


async def release_exporter(exporter: BatchExporter) -> None:
    exporter.refs -= 1
    if exporter.refs <= 0:
        if _exporters.get(exporter.key) is exporter:
            del _exporters[exporter.key]
        await exporter.close()
