"""The cases of ../shared/conformance/http1-robustness/ that concern the codec, run
through its functions the way the downstream protocol calls them, without a socket.

Each case's head is split naively (the cases run here are well-formed lines); the
cases about the syntax of lines (obs-fold, bare CR, a field without a colon...) belong
to the parser (llhttp) and are run end to end by test_http1_robustness.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidemesh.datapath.chunked import ChunkedDecoder
from sidemesh.datapath.codec import (
    BODY_CHUNKED,
    BODY_LENGTH,
    FORWARDED,
    CodecError,
    check_field_limits,
    check_target_length,
    field_name,
    parse_content_length,
    request_framing,
    request_host,
    request_target,
    strip_hop_by_hop,
    upstream_framing,
)
from sidemesh.datapath.messages import Headers

CASES_DIR = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "http1-robustness"

#: cases about line syntax, connection handling or upgrades: the parser's, not the codec's.
PARSER_CASES = {"C04", "C18", "C20", "C22", "C24", "C26", "C34", "C46", "C50"}

#: what the codec makes of each other case: a refusal's status, or what is forwarded.
EXPECTED: dict[str, Any] = {
    "C01": 400,  # CL and TE together
    "C02": 400,
    "C06": 400,  # TE "chunk" (and a CL): never framed by the CL
    "C08": 400,  # chunked twice
    "C10": 400,  # two Content-Length fields
    "C12": 400,
    "C14": 400,
    "C16": {"body": b"hello", "content-length": "5"},
    "C28": {"body": b"0\r\n\r\nG", "content-length": "6", "dropped": "transfer_encoding"},
    "C30": 400,
    "C32": {"host": "backend.test", "path": "/", "host-field": "backend.test"},
    "C36": 431,
    "C38": 400,
    "C40": 400,
    "C42": 400,
    "C44": {"body": b"hello", "unused": b"", "chunked": True},
    "C48": {"fields": ["host"]},
}


def _cases() -> list[dict[str, Any]]:
    index = CASES_DIR / "cases.jsonl"
    if not index.exists():
        return []
    return [json.loads(line) for line in index.read_text().splitlines() if line.strip()]


CASES = [case for case in _cases() if case["id"] not in PARSER_CASES]


def through_codec(data: bytes) -> dict[str, Any]:
    """What downstream.py and forward.py make of a request, with only the codec: its
    target, host, forwarded fields and body; raises CodecError for a refusal."""
    head, _, rest = data.partition(b"\r\n\r\n")
    line, *lines = head.split(b"\r\n")
    method, target, version = line.decode("latin-1").split(" ")
    check_target_length(len(target))
    fields: list[tuple[str, str]] = []
    size = hosts = 0
    for raw in lines:
        name, _, value = raw.partition(b":")
        size += len(name) + len(value) + 4
        check_field_limits(len(fields), size)
        key = field_name(name)
        if key is not None:
            fields.append((key, value.strip(b" \t").decode("latin-1")))
            hosts += key == "host"
    headers = Headers(fields)
    path, authority = request_target(method, target.encode("latin-1"))
    host = request_host(version[5:], headers.get("host"), hosts, authority)
    if authority is not None:
        headers.set("host", authority)
    # Several fields of one name are one comma-separated list (RFC 9110 5.3).
    te, cl = (
        ", ".join(headers.get_all(n)) or None for n in ("transfer-encoding", "content-length")
    )
    framing = request_framing(te, cl)
    body, unused = b"", b""
    if framing == BODY_CHUNKED:
        decoder = ChunkedDecoder()
        body = b"".join(decoder.feed(rest))
        decoder.end()
        unused = decoder.unused
    elif framing == BODY_LENGTH:
        length = parse_content_length(cl or "")
        body, unused = rest[:length], rest[length:]
    forwarded = strip_hop_by_hop(headers, FORWARDED, "connection" in headers)
    framing_field = upstream_framing(framing == BODY_CHUNKED, cl)
    if framing_field is not None:
        forwarded.append(framing_field)
    return {
        "path": path,
        "host": host,
        "fields": forwarded,
        "body": body,
        "unused": unused,
        "names": [name for name, _ in fields],
    }


@pytest.mark.skipif(not CASES, reason=f"conformance cases not found at {CASES_DIR}")
def test_every_case_is_classified() -> None:
    ids = {case["id"] for case in _cases()}
    assert ids - PARSER_CASES == set(EXPECTED), "classify new cases in EXPECTED or PARSER_CASES"


@pytest.mark.skipif(not CASES, reason=f"conformance cases not found at {CASES_DIR}")
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case: dict[str, Any]) -> None:
    data = (CASES_DIR / case["file"]).read_bytes()
    expected = EXPECTED[case["id"]]
    if isinstance(expected, int):
        assert case["expected_class"] in ("REJECT", "REJECT_OR_NORMALISE")
        with pytest.raises(CodecError) as info:
            through_codec(data)
        assert info.value.status == expected, info.value.message
        return
    assert case["expected_class"] == "ACCEPT"
    got = through_codec(data)
    fields = dict(got["fields"])
    # never ambiguous upstream: one framing field at most, nothing hop-by-hop
    assert not ("content-length" in fields and "transfer-encoding" in fields)
    assert not {"connection", "upgrade", "http2-settings"} & set(fields)
    assert not any("_" in name for name in fields)
    for key, value in expected.items():
        if key in ("body", "unused", "host", "path"):
            assert got[key] == value, key
        elif key == "content-length":
            assert fields["content-length"] == value
        elif key == "chunked":
            assert fields["transfer-encoding"] == "chunked"
        elif key == "dropped":
            assert value not in got["names"] and value.replace("_", "-") not in fields
        elif key == "host-field":
            assert fields["host"] == value
        elif key == "fields":
            assert list(fields) == value
