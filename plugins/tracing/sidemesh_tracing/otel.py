"""Emitting our spans through the OpenTelemetry API when an SDK is configured.

With only ``opentelemetry-api`` installed the global provider is a proxy that makes
no spans; the plugin then makes its own ids and records (see :mod:`.spans`). With an
SDK provider set, each span is started through it *when it begins*, so the span id we
propagate upstream is the SDK's own and both views of the trace agree.
"""

from __future__ import annotations

import re
import time

from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TracerProvider,
    TraceState,
)

from .spans import SpanRecord

__all__ = [
    "end_otel_span", "load_global_provider", "otel_trace_state", "otel_tracer", "start_otel_span",
]

_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
# OpenTelemetry's TraceState still checks keys against Trace Context's older grammar
# ("tenant@system", one "@" at most) and logs a warning for every member it refuses.
_OTEL_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)


def otel_trace_state(members: list[tuple[str, str]]) -> TraceState:
    """The caller's tracestate for OpenTelemetry's span contexts, less the members its
    older grammar refuses (they would cost a warning per request). Only the spans' record
    of it loses them: the request still carries every member upstream."""
    return TraceState([(key, value) for key, value in members if _OTEL_KEY.fullmatch(key)])


# The global provider is asked through a proxy of our own: get_tracer_provider() looks
# OTEL_PYTHON_TRACER_PROVIDER up in os.environ on every call while none is set (a KeyError
# raised and caught per request), and loads that provider on its first call only, which
# load_global_provider() makes.
_GLOBAL = trace.ProxyTracerProvider()
_NOT_RECORDING = (trace.ProxyTracer, trace.NoOpTracer)
#: the global provider's tracer once one is set (it can be set only once).
_global_tracer: list[Tracer] = []
#: the provider last passed explicitly, and its tracer: an SDK's get_tracer makes a new
#: tracer per call, twice per sampled request.
_explicit: list[tuple[TracerProvider, Tracer | None]] = []


def load_global_provider() -> None:
    """Let OpenTelemetry load the provider ``OTEL_PYTHON_TRACER_PROVIDER`` names, if any."""
    trace.get_tracer_provider()


#: how long "no SDK provider is set globally" is believed before asking again: asking
#: makes a proxy tracer each time (~1.5 µs per sampled request with no SDK).
RECHECK = 1.0
_unset_since: list[float] = []


def otel_tracer(provider: TracerProvider | None) -> Tracer | None:
    """A tracer that really records, or ``None`` when no SDK provider is configured (a
    global provider set later is used from at most :data:`RECHECK` seconds on)."""
    if provider is None:
        if _global_tracer:
            return _global_tracer[0]
        now = time.monotonic()
        if _unset_since and now - _unset_since[0] < RECHECK:
            return None
        _unset_since[:] = [now]
        found = _GLOBAL.get_tracer("sidemesh_tracing")
        if isinstance(found, _NOT_RECORDING):
            return None
        _global_tracer.append(found)
        return found
    if _explicit and _explicit[0][0] is provider:
        return _explicit[0][1]
    tracer = None if isinstance(provider, _NO_SDK) else provider.get_tracer("sidemesh_tracing")
    _explicit[:] = [(provider, tracer)]
    return tracer


def start_otel_span(
    tracer: Tracer,
    name: str,
    kind: SpanKind,
    trace_id: str,
    parent_id: str | None,
    flags: int,
    tracestate: list[tuple[str, str]],
    start_us: int,
    parent: Span | None = None,
) -> Span:
    """Start a span as a child of ``parent`` (our server span), or of the caller's remote
    span, or as a root when the request carried no context."""
    if parent is not None:
        context = trace.set_span_in_context(parent)
    elif parent_id is not None:
        remote = SpanContext(
            int(trace_id, 16),
            int(parent_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(flags & 0xFF),
            trace_state=otel_trace_state(tracestate),
        )
        context = trace.set_span_in_context(NonRecordingSpan(remote))
    else:
        context = None
    return tracer.start_span(name, context=context, kind=kind, start_time=start_us * 1000)


def end_otel_span(span: Span, record: SpanRecord) -> None:
    for key, value in record.tags.items():
        span.set_attribute(key, value)
    if record.error:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=(record.start_us + record.duration_us) * 1000)
