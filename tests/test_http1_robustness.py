"""The HTTP/1.1 robustness cases of ../shared/conformance/http1-robustness/: each gets
the outcome cases.jsonl asks for, and nothing ambiguous ever reaches the upstream."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sidemesh.testing import Upstream, raw_exchange, running_sidecar, simple_config, wait_for

CASES_DIR = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "http1-robustness"


def _cases() -> list[dict[str, Any]]:
    index = CASES_DIR / "cases.jsonl"
    if not index.exists():
        return []
    return [json.loads(line) for line in index.read_text().splitlines() if line.strip()]


CASES = _cases()


def _statuses(received: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3})", received)]


@pytest.fixture(scope="module")
def proxy() -> Any:
    if not CASES:
        pytest.skip(f"conformance cases not found at {CASES_DIR}")
    with Upstream() as up, running_sidecar(simple_config(up.address)) as sc:
        yield up, sc


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case: dict[str, Any], proxy: Any) -> None:
    up, sc = proxy
    before_requests, before_raw = len(up.requests), len(up.raw)
    data = (CASES_DIR / case["file"]).read_bytes()
    statuses = _statuses(raw_exchange(sc.port("main"), data))
    forwarded = up.requests[before_requests:]
    raw = b"".join(up.raw[before_raw:])
    kind = case["expected_class"]
    assert statuses, f"{case['id']}: no response at all"
    if kind == "REJECT":
        assert statuses == [statuses[0]] and 400 <= statuses[0] < 600, statuses
        assert statuses[0] in (400, 414, 431, 501), statuses
        assert not forwarded and not raw, f"{case['id']} reached the upstream: {raw!r}"
        return
    if kind == "REJECT_OR_NORMALISE" and statuses[0] >= 400:
        assert statuses[0] in (400, 501)
        assert not forwarded and not raw, f"{case['id']} reached the upstream: {raw!r}"
        return
    # accepted (or normalised): exactly one request answered and forwarded, unambiguously
    assert statuses == [200], statuses
    assert wait_for(lambda: len(up.requests) > before_requests, timeout=3)
    forwarded = up.requests[before_requests:]
    assert len(forwarded) == 1, forwarded
    request = forwarded[0]
    assert not ("content-length" in request.headers and "transfer-encoding" in request.headers)
    assert b"SMUGGLED" not in raw.split(b"\r\n\r\n", 1)[0]
    assert "upgrade" not in request.headers and "http2-settings" not in request.headers
    assert not any("_" in name for name in request.headers)
    expectations = {
        "C16": lambda: request.body == b"hello",
        "C28": lambda: request.body == b"0\r\n\r\nG",
        "C32": lambda: request.headers["host"] == "backend.test",
        "C44": lambda: request.body == b"hello" and "x-trailer" not in request.headers,
        "C46": lambda: request.path == "/",
    }
    check = expectations.get(case["id"])
    if check is not None:
        assert check(), request


def test_oversized_url_is_414_and_oversized_headers_431(proxy: Any) -> None:
    _, sc = proxy
    long_url = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _statuses(raw_exchange(sc.port("main"), long_url)) == [414]
    big_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 70000 + b"\r\n\r\n"
    assert _statuses(raw_exchange(sc.port("main"), big_header)) == [431]
