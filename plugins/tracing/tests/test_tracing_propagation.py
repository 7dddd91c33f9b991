"""B3 parsing, format preference on the way in, injection on the way out, sampling."""

from __future__ import annotations

import pytest

from sidemesh import Headers, testing
from sidemesh_tracing.b3 import parse_b3_multi, parse_b3_single
from sidemesh_tracing.propagation import extract, inject, new_ids, new_trace_id, ratio_sampled

TRACE = "463ac35c9f6413ad48485a3953bb6124"
SPAN = "0020000000000001"
W3C_TRACE = "12345678901234567890123456789012"


def test_b3_single_full_and_short() -> None:
    ctx = parse_b3_single([f"{TRACE}-{SPAN}-1-{'a' * 16}"])
    assert ctx is not None and (ctx.trace_id, ctx.span_id, ctx.sampled) == (TRACE, SPAN, True)
    ctx = parse_b3_single([f"{TRACE}-{SPAN}"])
    assert ctx is not None and ctx.sampled is None
    ctx = parse_b3_single([f"{TRACE}-{SPAN}-d"])
    assert ctx is not None and ctx.sampled and ctx.debug


def test_b3_64_bit_trace_id_is_padded() -> None:
    ctx = parse_b3_single([f"48485a3953bb6124-{SPAN}-0"])
    assert ctx is not None and ctx.trace_id == "0000000000000000" + "48485a3953bb6124"
    assert ctx.sampled is False


def test_b3_sampling_only() -> None:
    ctx = parse_b3_single(["0"])
    assert ctx is not None and ctx.trace_id is None and ctx.sampled is False


@pytest.mark.parametrize(
    "value",
    [
        f"{TRACE.upper()}-{SPAN}-1",
        f"{TRACE}-{SPAN}-x",
        f"{'0' * 32}-{SPAN}-1",
        f"{TRACE}-{'0' * 16}-1",
        f"{TRACE}-{SPAN}-1-zz",
        "abc-def",
        f"{TRACE}-{SPAN}-1-{SPAN}-x",
        "x",
    ],
)
def test_b3_single_invalid(value: str) -> None:
    assert parse_b3_single([value]) is None


def test_b3_multi() -> None:
    ctx = parse_b3_multi({"x-b3-traceid": [TRACE], "x-b3-spanid": [SPAN], "x-b3-sampled": ["1"]})
    assert ctx is not None and (ctx.trace_id, ctx.span_id, ctx.sampled) == (TRACE, SPAN, True)
    ctx = parse_b3_multi({"x-b3-traceid": [TRACE], "x-b3-spanid": [SPAN], "x-b3-flags": ["1"]})
    assert ctx is not None and ctx.debug and ctx.sampled
    ctx = parse_b3_multi({"x-b3-sampled": ["0"]})
    assert ctx is not None and ctx.trace_id is None and ctx.sampled is False
    assert parse_b3_multi({"x-b3-traceid": [TRACE]}) is None
    assert parse_b3_multi({}) is None


def test_w3c_preferred_over_b3() -> None:
    headers = Headers(
        [
            ("b3", f"{TRACE}-{SPAN}-1"),
            ("traceparent", f"00-{W3C_TRACE}-1234567890123456-01"),
            ("tracestate", "foo=1"),
        ]
    )
    incoming = extract(headers)
    assert incoming.source == "w3c" and incoming.trace_id == W3C_TRACE
    assert incoming.parent_id == "1234567890123456" and incoming.tracestate == [("foo", "1")]


def test_b3_single_then_multi_when_no_w3c() -> None:
    incoming = extract(Headers([("b3", f"{TRACE}-{SPAN}-0")]))
    assert (incoming.source, incoming.trace_id, incoming.sampled) == ("b3", TRACE, False)
    incoming = extract(
        Headers([("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN), ("X-B3-Sampled", "1")])
    )
    assert (incoming.source, incoming.parent_id, incoming.sampled) == ("b3multi", SPAN, True)


def test_invalid_traceparent_drops_tracestate_and_restarts() -> None:
    incoming = extract(
        Headers([("traceparent", f"00-{W3C_TRACE}-{'0' * 16}-01"), ("tracestate", "foo=1")])
    )
    assert incoming.parent_id is None and incoming.tracestate == []
    assert incoming.trace_id != W3C_TRACE and len(incoming.trace_id) == 32


def test_invalid_tracestate_is_dropped_but_trace_continues() -> None:
    incoming = extract(
        Headers(
            [("traceparent", f"00-{W3C_TRACE}-1234567890123456-01"), ("tracestate", "@foo=1,b=2")]
        )
    )
    assert incoming.trace_id == W3C_TRACE and incoming.tracestate == []


def test_duplicated_tracestate_key_keeps_the_rest() -> None:
    incoming = extract(
        Headers(
            [
                ("traceparent", f"00-{W3C_TRACE}-1234567890123456-01"),
                ("tracestate", "foo@=1,foo@=2"),
                ("TraceState", "bar=3"),
            ]
        )
    )
    assert incoming.tracestate == [("foo@", "1"), ("bar", "3")]


def test_inject_formats_and_strips_stale_headers() -> None:
    incoming = extract(
        Headers(
            [("traceparent", f"00-{W3C_TRACE}-1234567890123456-03"), ("tracestate", "a=1, ,b=2")]
        )
    )
    headers = Headers([("traceparent", "stale"), ("b3", "stale"), ("x-b3-spanid", "stale")])
    inject(headers, incoming, "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", True, ("w3c",))
    assert headers.get_all("traceparent") == [f"00-{W3C_TRACE}-aaaaaaaaaaaaaaaa-03"]
    assert headers.get("tracestate") == "a=1,b=2"
    assert "b3" not in headers and "x-b3-spanid" not in headers

    inject(
        headers, incoming, "cccccccccccccccc", "bbbbbbbbbbbbbbbb", False, ("w3c", "b3", "b3multi")
    )
    # Not sampled: flag bit cleared, random bit (0x02) kept.
    assert headers.get("traceparent") == f"00-{W3C_TRACE}-cccccccccccccccc-02"
    assert headers.get("b3") == f"{W3C_TRACE}-cccccccccccccccc-0-bbbbbbbbbbbbbbbb"
    assert headers.get("x-b3-traceid") == W3C_TRACE
    assert headers.get("x-b3-spanid") == "cccccccccccccccc"
    assert headers.get("x-b3-parentspanid") == "bbbbbbbbbbbbbbbb"
    assert headers.get("x-b3-sampled") == "0"


def test_ratio_sampling_is_deterministic_and_proportional() -> None:
    ids = [new_trace_id() for _ in range(4000)]
    assert all(ratio_sampled(t, 1.0) for t in ids)
    assert not any(ratio_sampled(t, 0.0) for t in ids)
    picked = [t for t in ids if ratio_sampled(t, 0.25)]
    assert 700 < len(picked) < 1300
    assert [t for t in ids if ratio_sampled(t, 0.25)] == picked
    # A trace sampled at a low ratio is sampled at every higher ratio (consistent cut).
    assert all(ratio_sampled(t, 0.5) for t in picked)


def test_new_ids_are_valid_and_never_repeat_across_batches() -> None:
    seen: set[str] = set()
    for _ in range(300):  # several batches of drawn ids
        trace_id, server_id, client_id = new_ids()
        assert len(trace_id) == 32 and len(server_id) == len(client_id) == 16
        assert int(trace_id, 16) and int(server_id, 16) and int(client_id, 16)
        assert trace_id == trace_id.lower()
        seen.update((trace_id, server_id, client_id))
    assert len(seen) == 900


def test_a_forked_worker_does_not_hand_out_its_parents_ids() -> None:
    new_ids()  # the parent now holds a batch of drawn ids
    child = testing.in_forked_child(lambda: ",".join(new_ids())).split(",")
    assert child != list(new_ids())
