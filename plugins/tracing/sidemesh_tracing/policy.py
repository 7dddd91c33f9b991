"""The ``tracing`` policy: one server span per request, one client span per attempt."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar

from opentelemetry.trace import Span, SpanKind, TracerProvider

from sidemesh import (
    Attempt,
    EndpointView,
    Policy,
    PolicyContext,
    Request,
    Response,
    ResponseFlag,
    StashKey,
    parse_duration,
)

from .attributes import client_tags, finish_client, finish_server, grpc_tags, server_tags
from .otel import end_otel_span, load_global_provider, otel_tracer, start_otel_span
from .propagation import (
    Incoming,
    Propagation,
    extract,
    find_context,
    inject,
    new_ids,
    new_span_id,
    ratio_sampled,
)
from .spans import SpanRecord, now_us
from .w3c import FLAG_RANDOM, FLAG_SAMPLED, format_traceparent

if TYPE_CHECKING:
    from .exporter import BatchExporter

__all__ = ["TRACE", "RequestTrace", "TracingPolicy"]

#: The exporters' config keys, checked alike.
_EXPORTERS = ("zipkin", "otlp")


def _load_schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@dataclass(slots=True)
class RequestTrace:
    """Per-request tracing state, kept in the request's stash under :data:`TRACE`.

    ``injected_id`` is the span id currently written in the request's headers;
    ``injected_used`` says an attempt already claimed it, so the next one needs a new id.
    """

    incoming: Incoming
    sampled: bool
    server_id: str
    request_id: str
    server: SpanRecord | None
    otel_server: Span | None
    injected_id: str
    injected_used: bool = False
    client: SpanRecord | None = None
    otel_client: Span | None = None
    #: a gRPC call's last attempt span, emitted when the trailers told its status.
    last_client: tuple[SpanRecord, Span | None] | None = None
    done: bool = False


#: where a request's :class:`RequestTrace` is kept between hooks.
TRACE = StashKey[RequestTrace]("tracing")
#: a sampled request's server and client span when nothing would read them: never
#: finished nor emitted (and so never changed).
NOT_RECORDED = SpanRecord("", "", None, "", "SERVER", 0, "")


class TracingPolicy(Policy):
    """Extracts the caller's context (W3C, B3), records spans, propagates upstream and
    exports to Zipkin and/or OTLP."""

    name: ClassVar[str] = "tracing"
    schema: ClassVar[dict[str, Any]] = _load_schema()
    #: The OpenTelemetry provider to emit through; ``None`` means the global one.
    tracer_provider: TracerProvider | None = None

    def __init__(self, config: dict[str, Any], context: PolicyContext) -> None:
        super().__init__(config, context)
        self.ratio = float(config.get("sampling", 1.0))
        formats: list[Propagation] = list(config.get("propagation", ["w3c"]))
        self.formats: tuple[Propagation, ...] = tuple(dict.fromkeys(formats))
        self.service_name = str(
            config.get("service_name") or context.node.get("service") or "sidemesh"
        )
        zipkin, otlp = config.get("zipkin"), config.get("otlp")
        #: the Zipkin exporter, when ``zipkin`` is configured.
        self.exporter: BatchExporter | None = None
        #: the OTLP exporter, when ``otlp`` is configured.
        self.otlp: BatchExporter | None = None
        # The exporters (httpx; OTLP's OpenTelemetry SDK and protobuf: ~10 MB of RSS) load
        # only where a config exports: the registry imports this module in every sidecar.
        if zipkin is not None:
            from .exporter import ExporterSettings, ZipkinExporter, acquire_exporter

            self.exporter = acquire_exporter(
                ExporterSettings(zipkin["endpoint"], *_batching(zipkin)), ZipkinExporter
            )
        if otlp is not None:
            from .exporter import acquire_exporter
            from .otlp import OtlpExporter, OtlpSettings

            headers = tuple(sorted((otlp.get("headers") or {}).items()))
            self.otlp = acquire_exporter(
                OtlpSettings(otlp.get("endpoint", ""), *_batching(otlp), headers=headers),
                OtlpExporter,
            )
        self._exporters = tuple(e for e in (self.exporter, self.otlp) if e is not None)
        # W3C alone (the default) can be read back from the request's own headers: a
        # request whose spans nothing records then keeps no state between hooks.
        self._stateless_w3c = self.formats == ("w3c",)
        load_global_provider()

    @classmethod
    def check_config(cls, config: dict[str, Any], context: PolicyContext) -> list[str]:
        problems = []
        for key in _EXPORTERS:
            section = config.get(key) or {}
            if "flush_interval" in section:
                try:
                    if parse_duration(section["flush_interval"]) <= 0:
                        problems.append(f"{key}.flush_interval must be greater than 0s")
                except ValueError as exc:
                    problems.append(f"{key}.flush_interval: {exc}")
        return problems

    def on_request(self, request: Request) -> Response | None:
        headers = request.headers
        trace_id, server_id, client_id = new_ids()
        incoming = find_context(headers)
        if incoming is None:
            sampled = ratio_sampled(trace_id, self.ratio)
        elif incoming.debug:
            sampled = True
        elif incoming.sampled is not None:
            sampled = incoming.sampled
        else:
            sampled = ratio_sampled(incoming.trace_id, self.ratio)
        given = headers.get("x-request-id")
        request_id = given or request.request_id or str(uuid.uuid4())
        if given is None:
            headers.add("x-request-id", request_id)
        if not request.request_id:
            request.request_id = request_id
        server: SpanRecord | None = None
        otel_server: Span | None = None
        tracer = otel_tracer(self.tracer_provider) if sampled else None
        log = request.log
        if self._stateless_w3c and not (sampled and (tracer is not None or self._exporters)):
            # Nothing records this request's spans: the first attempt's context goes in
            # now, and a retry reads it back (select_upstream). No state, no span.
            if incoming is None:
                # A new trace, and no tracing field to remove first.
                flags = FLAG_RANDOM | FLAG_SAMPLED if sampled else FLAG_RANDOM
                headers.add("traceparent", format_traceparent(trace_id, client_id, flags))
            else:
                inject(headers, incoming, client_id, server_id, sampled, self.formats)
                trace_id = incoming.trace_id
            log["trace_id"] = trace_id
            log["span_id"] = server_id
            return None
        if incoming is None:
            incoming = Incoming(trace_id, None, None, FLAG_RANDOM)
        if sampled and tracer is None and not self._exporters:
            # Nothing would read the spans (no collector, no SDK): the request still
            # carries the sampled context upstream, ids and log fields as ever.
            server = NOT_RECORDED
        elif sampled:
            start = now_us()
            name = self._server_name(request)
            if tracer is not None:
                otel_server = start_otel_span(
                    tracer, name, SpanKind.SERVER, incoming.trace_id,
                    incoming.parent_id, incoming.flags, incoming.tracestate, start,
                )
                otel_ctx = otel_server.get_span_context()
                if otel_ctx.is_valid:
                    server_id = f"{otel_ctx.span_id:016x}"
                    # A root span's trace id is the SDK's own choice.
                    incoming.trace_id = f"{otel_ctx.trace_id:032x}"
            tags, remote = server_tags(request, request_id)
            server = SpanRecord(
                incoming.trace_id, server_id, incoming.parent_id, name,
                "SERVER", start, self.service_name, tags=tags, remote=remote,
                debug=incoming.debug, tracestate=incoming.tracestate,
            )
        # Written upstream by select_upstream, which runs before every attempt.
        request.stash[TRACE] = RequestTrace(
            incoming, sampled, server_id, request_id, server, otel_server, client_id
        )
        log["trace_id"] = incoming.trace_id
        log["span_id"] = server_id
        return None

    def select_upstream(
        self, request: Request, endpoints: Sequence[EndpointView]
    ) -> Sequence[EndpointView]:
        # The per-attempt traceparent is written here, not in on_response: response hooks
        # run in reverse chain order, so a policy after us (retry) may ask for another
        # attempt after our on_response already ran, and we could not know it. This hook
        # runs before *every* attempt, so each one gets its own client span id.
        state = request.stash.get(TRACE, None)
        if state is None:
            if request.attempts > 1:
                # A stateless request's retry: the context the previous attempt sent,
                # under a span id of its own.
                sent = extract(request.headers)
                inject(request.headers, sent, new_span_id(), "", bool(sent.sampled),
                       self.formats)
        elif state.client is None and state.otel_client is None:
            self._open_attempt(request, state)
        return endpoints

    def on_response(self, request: Request, attempt: Attempt) -> None:
        state = request.stash.get(TRACE, None)
        if state is None:
            return
        if state.client is None and state.otel_client is None:
            if attempt.endpoint is None:
                # No upstream was tried (a policy answered directly): no client span.
                return
            self._open_attempt(request, state)
        span, otel_span = state.client, state.otel_client
        state.client = state.otel_client = None
        if span is None or span is NOT_RECORDED:
            return
        # A client span's tags start empty: this is all of them.
        span.tags = client_tags(request, attempt.endpoint, state.request_id, attempt.number)
        finish_client(span, attempt)
        if request.is_grpc:
            # A gRPC status usually comes in the trailers, after this hook.
            if state.last_client is not None:
                self._emit(*state.last_client)
            state.last_client = (span, otel_span)
        else:
            self._emit(span, otel_span)

    def on_complete(
        self, request: Request, response: Response | None, flag: ResponseFlag | None
    ) -> None:
        state = request.stash.get(TRACE, None)
        if state is None or state.done:
            return
        state.done = True
        if state.last_client is not None:
            span, otel_span = state.last_client
            grpc_tags(span, request, response)
            self._emit(span, otel_span)
        if state.server is not None and state.server is not NOT_RECORDED:
            finish_server(state.server, request, response, flag)
            self._emit(state.server, state.otel_server)

    async def close(self) -> None:
        exporters, self._exporters = self._exporters, ()
        self.exporter = self.otlp = None
        if exporters:
            from .exporter import release_exporter

            for exporter in exporters:
                await release_exporter(exporter)

    def _server_name(self, request: Request) -> str:
        return f"{request.method} {request.route}" if request.route else request.method

    def _open_attempt(self, request: Request, state: RequestTrace) -> None:
        span_id = state.injected_id if not state.injected_used else new_span_id()
        state.injected_used = True
        if not state.sampled or state.server is None:
            state.injected_id = span_id
            inject(request.headers, state.incoming, span_id, state.server_id, False,
                   self.formats)
            return
        if state.server is NOT_RECORDED:
            state.injected_id = span_id
            inject(request.headers, state.incoming, span_id, state.server_id, True,
                   self.formats)
            state.client = NOT_RECORDED
            return
        start = now_us()
        name = f"{request.method} {request.cluster}" if request.cluster else request.method
        tracer = otel_tracer(self.tracer_provider) if state.otel_server is not None else None
        if tracer is not None:
            state.otel_client = start_otel_span(
                tracer, name, SpanKind.CLIENT, state.incoming.trace_id, state.server_id,
                state.incoming.flags, state.incoming.tracestate, start, state.otel_server,
            )
            otel_ctx = state.otel_client.get_span_context()
            if otel_ctx.is_valid:
                span_id = f"{otel_ctx.span_id:016x}"
        state.injected_id = span_id
        inject(request.headers, state.incoming, span_id, state.server_id, True, self.formats)
        state.client = SpanRecord(
            state.incoming.trace_id, span_id, state.server_id, name, "CLIENT", start,
            self.service_name, debug=state.incoming.debug, tracestate=state.incoming.tracestate,
        )

    def _emit(self, span: SpanRecord, otel_span: Span | None) -> None:
        if otel_span is not None:
            end_otel_span(otel_span, span)
        for exporter in self._exporters:
            exporter.submit(span)


def _batching(section: dict[str, Any]) -> tuple[int, float, int]:
    """An exporter section's batch size, flush interval (seconds) and queue bound."""
    return (
        int(section.get("batch_size", 100)),
        parse_duration(section.get("flush_interval", "1s")),
        int(section.get("max_queue", 10000)),
    )
