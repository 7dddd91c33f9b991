"""OTLP/HTTP export (protobuf, ``POST /v1/traces``) through the OpenTelemetry SDK's
exporter, on the plugin's own queue and back-off (:class:`.exporter.BatchExporter`).

The SDK's ``OTLPSpanExporter`` does the encoding, the standard environment
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``..._HEADERS``,
``..._TIMEOUT``, ``..._COMPRESSION``, ``..._CERTIFICATE``), its own retries of transient
failures and TLS. It is blocking, so batches are converted and sent in a worker thread:
the event loop never waits on the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .exporter import BatchExporter, ExporterSettings, Sender
from .otel import otel_trace_state
from .spans import SpanRecord

__all__ = [
    "OTLP_PATH",
    "OtlpExporter",
    "OtlpSettings",
    "endpoint_from_env",
    "otlp_url",
    "to_readable_span",
]

OTLP_PATH = "/v1/traces"
DEFAULT_ENDPOINT = "http://localhost:4318"
_SCOPE = InstrumentationScope("sidemesh_tracing")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_KINDS = {"SERVER": SpanKind.SERVER, "CLIENT": SpanKind.CLIENT}


def otlp_url(endpoint: str) -> str:
    """The receiver's POST URL: a base URL (``http://collector:4318``, as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is written) gets ``/v1/traces``, a full one (as
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is written) is kept."""
    base = endpoint.rstrip("/")
    return base if base.endswith(OTLP_PATH) else base + OTLP_PATH


def endpoint_from_env() -> str:
    """Where spans go when the config names no endpoint, by OpenTelemetry's rules: the
    traces variable as written, else the base variable (or the default) + ``/v1/traces``."""
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
    return base.rstrip("/") + OTLP_PATH


@dataclass(frozen=True, slots=True)
class OtlpSettings(ExporterSettings):
    """``endpoint`` empty: the SDK reads it from the environment. ``headers`` are sent
    with every export, over those of ``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS``."""

    headers: tuple[tuple[str, str], ...] = ()


@functools.lru_cache(maxsize=64)
def _resource(service: str) -> Resource:
    # create() adds OTEL_RESOURCE_ATTRIBUTES and the SDK's own attributes; the sidecar's
    # service name wins over OTEL_SERVICE_NAME, as in the Zipkin spans.
    return Resource.create({SERVICE_NAME: service})


def to_readable_span(span: SpanRecord) -> ReadableSpan:
    """One of the plugin's span records as the SDK's exporters take it, ids unchanged."""
    trace_id = int(span.trace_id, 16)
    context = SpanContext(trace_id, int(span.span_id, 16), False, _SAMPLED,
                          otel_trace_state(span.tracestate))
    parent = None
    if span.parent_id is not None:
        # A server span's parent is the caller's span, in another process.
        parent = SpanContext(trace_id, int(span.parent_id, 16), span.kind == "SERVER", _SAMPLED)
    start = span.start_us * 1000
    return ReadableSpan(
        name=span.name,
        context=context,
        parent=parent,
        resource=_resource(span.local_service),
        attributes=dict(span.tags),
        kind=_KINDS[span.kind],
        status=Status(StatusCode.ERROR) if span.error else Status(StatusCode.UNSET),
        start_time=start,
        end_time=start + max(1, span.duration_us) * 1000,
        instrumentation_scope=_SCOPE,
    )


class OtlpExporter(BatchExporter):
    """Sends batches to an OTLP/HTTP receiver with the SDK's ``OTLPSpanExporter``."""

    kind = "otlp"

    def __init__(self, settings: ExporterSettings) -> None:
        super().__init__(settings)
        headers = dict(settings.headers) if isinstance(settings, OtlpSettings) else {}
        self.url = otlp_url(settings.endpoint) if settings.endpoint else endpoint_from_env()
        self._sdk = OTLPSpanExporter(endpoint=self.url, headers=headers or None)

    @property
    def target(self) -> str:
        return self.url

    def _export(self, batch: list[SpanRecord]) -> str | None:
        result = self._sdk.export([to_readable_span(span) for span in batch])
        # The SDK logs the cause itself (status, connection error).
        return None if result is SpanExportResult.SUCCESS else "the OTLP exporter failed"

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Sender]:
        async def send(batch: list[SpanRecord]) -> str | None:
            return await asyncio.to_thread(self._export, batch)

        yield send

    async def _stop(self) -> None:
        # Ends the SDK's retry waits of an export still running in its thread.
        self._sdk.shutdown()
