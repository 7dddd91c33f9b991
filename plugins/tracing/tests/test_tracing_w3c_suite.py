"""The cases of the W3C Trace Context test suite (w3c/trace-context ``test/``, spec level
2, strictness 2), in our own words, run the way its harness runs them: a caller sends
each request to a sidecar pair with a tracing-unaware app between them
(``tracing_testbed.py``), the app calls back through the second sidecar, and the
callback's trace headers are checked.

The official harness itself runs through the same bed when ``SIDEMESH_W3C_HARNESS_DIR``
names its ``test/`` directory (see the plugin's README)."""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from sidemesh_tracing_testbed import run_official_harness, sidecar_pair

from sidemesh import testing

TRACE = "12345678901234567890123456789012"
SPAN = "1234567890123456"
CONTINUED = f"00-{TRACE}-{SPAN}-00"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass
class Bed:
    service: str
    callback: testing.Upstream


@dataclass
class Callback:
    """The trace headers one callback arrived with, every field line kept."""

    traceparent: list[str]
    tracestate: list[str]

    @property
    def ids(self) -> tuple[str, str, int]:
        assert len(self.traceparent) == 1, self.traceparent
        found = TRACEPARENT.fullmatch(self.traceparent[0])
        assert found is not None, self.traceparent
        return found[1], found[2], int(found[3], 16)

    @property
    def state(self) -> str | None:
        return ",".join(self.tracestate) if self.tracestate else None


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    with testing.Upstream(name="callback") as callback, sidecar_pair(callback.address) as service:
        yield Bed(service, callback)


def _fields(raw: bytes) -> list[tuple[str, str]]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return [(n.strip().lower(), v.strip(" \t")) for n, _, v in (line.partition(":")
                                                                for line in head)]


def call(bed: Bed, headers: list[tuple[str, str]], count: int = 1) -> list[Callback]:
    """One harness request: the app is asked to call back ``count`` times."""
    before = len(bed.callback.requests)
    actions = [{"url": f"http://{bed.callback.address}/scope.{i}", "arguments": []}
               for i in range(count)]
    # http.client sends field values as given (httpx refuses the suite's leading and
    # trailing whitespace), each pair as its own field line.
    url = urlsplit(bed.service)
    conn = http.client.HTTPConnection(url.netloc, timeout=10)
    try:
        conn.putrequest("POST", url.path, skip_accept_encoding=True)
        body = json.dumps(actions).encode()
        for name, value in [*headers, ("content-type", "application/json"),
                            ("content-length", str(len(body)))]:
            conn.putheader(name, value)
        conn.endheaders(body)
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()
        reply.read()
    finally:
        conn.close()
    seen = bed.callback.requests[before:]
    assert [s.path for s in seen] == [f"/scope.{i}" for i in range(count)]
    result = []
    for request in seen:
        fields = _fields(request.raw)
        result.append(Callback([v for n, v in fields if n == "traceparent"],
                               [v for n, v in fields if n == "tracestate"]))
    return result


def one(bed: Bed, headers: list[tuple[str, str]]) -> Callback:
    return call(bed, headers)[0]


MEMBERS = [f"bar{i:02d}={i:02d}" for i in range(1, 34)]
KEY = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
LONG_TENANT = "t" * 241 + "@" + "v" * 14
VALUE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")


@pytest.mark.parametrize(
    ("lines", "forwarded"),
    [
        # keys with "@" anywhere but first: kept, with the members after them
        (["foo@=1,bar=2"], "foo@=1,bar=2"),
        (["foo@@bar=1,bar=2"], "foo@@bar=1,bar=2"),
        (["foo@bar@baz=1,bar=2"], "foo@bar@baz=1,bar=2"),
        (["@foo=1,bar=2"], None),
        # key length: 256 characters in all, whatever the "@"
        (["foo=1", "z" * 256 + "=1"], "foo=1," + "z" * 256 + "=1"),
        (["foo=1", "z" * 257 + "=1"], None),
        (["foo=1", LONG_TENANT + "=1"], "foo=1," + LONG_TENANT + "=1"),
        (["foo=1", "t" * 242 + "@v=1"], "foo=1," + "t" * 242 + "@v=1"),
        (["foo=1", "t@" + "v" * 15 + "=1"], "foo=1,t@" + "v" * 15 + "=1"),
        # duplicated keys: one is kept, the header is not lost
        (["foo=1,foo=1"], "foo=1"),
        (["foo=1,foo=2"], "foo=1"),
        (["foo=1", "foo=1"], "foo=1"),
        (["foo=1", "foo=2"], "foo=1"),
        # member count: 32 kept, 33 is not a tracestate
        ([",".join(MEMBERS[:10]), ",".join(MEMBERS[10:20]), ",".join(MEMBERS[20:32])],
         ",".join(MEMBERS[:32])),
        ([",".join(MEMBERS[:10]), ",".join(MEMBERS[10:20]), ",".join(MEMBERS[20:])], None),
        # every allowed character
        ([f"{KEY}={VALUE}"], f"{KEY}={VALUE}"),
        ([f"{KEY}@a-z0-9_-*/={VALUE}"], f"{KEY}@a-z0-9_-*/={VALUE}"),
        # empty headers and members, optional whitespace, several field lines in order
        ([""], None),
        (["foo=1", ""], "foo=1"),
        (["", "foo=1"], "foo=1"),
        (["foo=1 \t , \t bar=2, \t baz=3"], "foo=1,bar=2,baz=3"),
        (["\t foo=1 \t"], "foo=1"),
        (["foo=1,bar=2", "rojo=1,congo=2", "baz=3"], "foo=1,bar=2,rojo=1,congo=2,baz=3"),
        # illegal keys and values: the header goes
        (["foo =1"], None),
        (["FOO=1"], None),
        (["foo.bar=1"], None),
        (["foo=bar=baz"], None),
        (["foo=,bar=3"], None),
    ],
)
def test_tracestate_through_a_sidecar_pair(
    bed: Bed, lines: list[str], forwarded: str | None
) -> None:
    got = one(bed, [("traceparent", CONTINUED), *(("tracestate", line) for line in lines)])
    trace_id, parent_id, _ = got.ids
    assert (trace_id, got.state) == (TRACE, forwarded)
    assert parent_id != SPAN


def test_tracestate_header_names(bed: Bed) -> None:
    for name in ("TraceState", "TrAcEsTaTe", "TRACESTATE"):
        assert one(bed, [("traceparent", CONTINUED), (name, "foo=1")]).state == "foo=1"
    for name in ("trace-state", "trace.state"):
        assert one(bed, [("traceparent", CONTINUED), (name, "foo=1")]).state is None
    # Without a traceparent a tracestate means nothing.
    assert one(bed, [("tracestate", "foo=1,bar=2")]).state is None


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE}-{SPAN}-01",
        f" 00-{TRACE}-{SPAN}-01",
        f"\t 00-{TRACE}-{SPAN}-01 \t",
        f"cc-{TRACE}-{SPAN}-01",
        f"cc-{TRACE}-{SPAN}-01-what-the-future-will-be-like",
    ],
)
def test_valid_traceparent_continues(bed: Bed, value: str) -> None:
    got = one(bed, [("TraceParent", value), ("tracestate", "foo=1")])
    trace_id, parent_id, flags = got.ids
    assert (trace_id, flags & 1, got.state) == (TRACE, 1, "foo=1")
    assert parent_id != SPAN


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", f"00-{TRACE}-{SPAN}-01.")],
        [("traceparent", f"00-{TRACE}-{SPAN}-01-what-the-future-will-be-like")],
        [("traceparent", f"cc-{TRACE}-{SPAN}-01.what-the-future-will-be-like")],
        [("traceparent", f"ff-{TRACE}-{SPAN}-01")],
        [("traceparent", f".0-{TRACE}-{SPAN}-01")],
        [("traceparent", f"000-{TRACE}-{SPAN}-01")],
        [("traceparent", f"0-{TRACE}-{SPAN}-01")],
        [("traceparent", f"00-{TRACE}-0000000000000000-01")],
        [("traceparent", f"00-{TRACE}-.234567890123456-01")],
        [("traceparent", f"00-{TRACE}-12345678901234567-01")],
        [("traceparent", f"00-{TRACE}-123456789012345-01")],
        [("traceparent", f"00-{TRACE}-{SPAN}-.0")],
        [("traceparent", f"00-{TRACE}-{SPAN}-001")],
        [("traceparent", f"00-{TRACE}-{SPAN}-1")],
        [("traceparent", f"00-{TRACE}3-{SPAN}-01")],
        [("traceparent", f"00-{TRACE[:-1]}-{SPAN}-01")],
        [("traceparent", f"00-{TRACE[:-1]}.-{SPAN}-01")],
        [("trace-parent", f"00-{TRACE}-{SPAN}-01")],
        [("traceparent", f"00-{TRACE[:-1]}1-{SPAN}-01"), ("traceparent", f"00-{TRACE}-{SPAN}-01")],
    ],
)
def test_invalid_traceparent_restarts_the_trace(
    bed: Bed, headers: list[tuple[str, str]]
) -> None:
    got = one(bed, [*headers, ("tracestate", "foo=1")])
    trace_id, _, flags = got.ids
    assert trace_id not in (TRACE, f"{TRACE[:-1]}1", "0" * 32)
    assert got.state is None
    assert flags & 0x02  # a trace we start has a random id, and says so


def test_all_zero_trace_id_restarts(bed: Bed) -> None:
    trace_id, _, _ = one(bed, [("traceparent", f"00-{'0' * 32}-{SPAN}-01")]).ids
    assert trace_id != "0" * 32


def test_flags_random_kept_reserved_cleared(bed: Bed) -> None:
    assert one(bed, [("traceparent", f"00-{TRACE}-{SPAN}-02")]).ids[0::2] == (TRACE, 0x02)
    assert one(bed, [("traceparent", f"00-{TRACE}-{SPAN}-ff")]).ids[0::2] == (TRACE, 0x03)


@pytest.mark.parametrize(
    "headers", [[("traceparent", f"00-{TRACE}-{SPAN}-01")], [],
                [("traceparent", f"00-{'0' * 32}-{SPAN}-01")]],
)
def test_each_call_of_the_app_gets_its_own_parent_id(
    bed: Bed, headers: list[tuple[str, str]]
) -> None:
    got = [c.ids for c in call(bed, headers, count=3)]
    assert len({parent for _, parent, _ in got}) == 3
    trace_ids = {trace for trace, _, _ in got}
    if headers and headers[0][1].startswith(f"00-{TRACE}"):
        assert trace_ids == {TRACE}
    assert "0" * 32 not in trace_ids


HARNESS_DIR = os.environ.get("SIDEMESH_W3C_HARNESS_DIR", "")


@pytest.mark.skipif(not HARNESS_DIR, reason="SIDEMESH_W3C_HARNESS_DIR is not set (README)")
def test_the_official_w3c_harness_passes() -> None:
    python = os.environ.get("SIDEMESH_W3C_HARNESS_PYTHON", sys.executable)
    result = run_official_harness(HARNESS_DIR, python, timeout=240)
    assert result.returncode == 0, result.stdout
    assert re.search(r"^Ran \d+ tests? in .*\n\nOK$", result.stdout, re.M), result.stdout
