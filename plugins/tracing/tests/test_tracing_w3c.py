"""W3C Trace Context level 2 parsing, case by case (the cases of w3c/trace-context's
test suite and the spec's text, current grammar)."""

from __future__ import annotations

import pytest

from sidemesh_tracing.w3c import (
    format_traceparent,
    parse_traceparent,
    parse_tracestate,
    truncate_tracestate,
)

TRACE = "12345678901234567890123456789012"
SPAN = "1234567890123456"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_valid_traceparent() -> None:
    parsed = parse_traceparent([VALID])
    assert parsed is not None
    assert (parsed.trace_id, parsed.parent_id, parsed.flags, parsed.sampled) == (
        TRACE,
        SPAN,
        1,
        True,
    )


def test_not_sampled_and_random_flag_kept() -> None:
    parsed = parse_traceparent([f"00-{TRACE}-{SPAN}-02"])
    assert parsed is not None and not parsed.sampled and parsed.flags == 0x02


@pytest.mark.parametrize(("flags", "kept"), [("ff", 0x03), ("fd", 0x01), ("04", 0x00)])
def test_reserved_flags_are_cleared(flags: str, kept: int) -> None:
    # "The behavior of other flags ... is reserved for future use. Vendors MUST set those
    # to zero": sampled (0x01) and random (0x02) are all we may forward.
    for version in ("00", "cc"):
        parsed = parse_traceparent([f"{version}-{TRACE}-{SPAN}-{flags}"])
        assert parsed is not None and parsed.flags == kept


@pytest.mark.parametrize("value", [f" {VALID}", f"{VALID} \t", f"\t {VALID}\t "])
def test_surrounding_whitespace_is_ignored(value: str) -> None:
    assert parse_traceparent([value]) is not None


@pytest.mark.parametrize(
    "value",
    [
        f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
        f".0-{TRACE}-{SPAN}-01",
        f"0.-{TRACE}-{SPAN}-01",
        f"0A-{TRACE}-{SPAN}-01",  # uppercase version
        f"000-{TRACE}-{SPAN}-01",
        f"0-{TRACE}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-01-what-the-future-will-be-like",  # v00 has nothing after
        f"00-{TRACE}-{SPAN}-01.",
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper().replace('1', 'A')}-{SPAN}-01",  # uppercase trace id
        f"00-{TRACE}-ABCDEF7890123456-01",  # uppercase parent id
        f"00-{TRACE}-{SPAN}-0A",  # uppercase flags
        f"00-{TRACE[:-1]}.-{SPAN}-01",
        f"00-{TRACE}-{SPAN[:-1]}.-01",
        f"00-{TRACE}-{SPAN}-.0",
        f"00-{TRACE}1-{SPAN}-01",  # trace id too long
        f"00-{TRACE[:-1]}-{SPAN}-01",  # too short
        f"00-{TRACE}-{SPAN}1-01",
        f"00-{TRACE}-{SPAN}-011",
        f"00-{TRACE}-{SPAN}-1",
        f"00_{TRACE}_{SPAN}_01",
        "",
        "garbage",
    ],
)
def test_invalid_traceparent_restarts(value: str) -> None:
    assert parse_traceparent([value]) is None


def test_future_version_is_parsed_by_the_rules() -> None:
    parsed = parse_traceparent([f"cc-{TRACE}-{SPAN}-01-what-the-future-will-be-like"])
    assert parsed is not None and parsed.trace_id == TRACE and parsed.sampled
    assert parse_traceparent([f"cc-{TRACE}-{SPAN}-01"]) is not None
    # After the flags a future version must continue with a dash.
    assert parse_traceparent([f"cc-{TRACE}-{SPAN}-01.what-the-future-will-be-like"]) is None
    assert parse_traceparent([f"cc-{TRACE}-{SPAN}-0x-future"]) is None


def test_duplicated_traceparent_restarts() -> None:
    assert parse_traceparent([VALID, VALID]) is None
    assert parse_traceparent([VALID, f"00-{TRACE}-6543210987654321-01"]) is None
    assert parse_traceparent([]) is None


def test_we_always_write_version_00() -> None:
    assert format_traceparent(TRACE, SPAN, 0x03) == f"00-{TRACE}-{SPAN}-03"


# ---------------------------------------------------------------- tracestate


def test_tracestate_members_in_order() -> None:
    assert parse_tracestate(["foo=1,bar=2"]) == [("foo", "1"), ("bar", "2")]


def test_multiple_header_lines_are_combined() -> None:
    assert parse_tracestate(["foo=1", "bar=2,baz=3"]) == [("foo", "1"), ("bar", "2"), ("baz", "3")]


@pytest.mark.parametrize(
    "value",
    [
        "foo=1 \t , \t bar=2",
        "foo=1\t \t,\t \tbar=2",
        " foo=1,bar=2",
        "\tfoo=1,bar=2",
        "foo=1,bar=2 ",
        "foo=1,bar=2\t",
        "\t foo=1,bar=2 \t",
    ],
)
def test_optional_whitespace_around_members(value: str) -> None:
    assert parse_tracestate([value]) == [("foo", "1"), ("bar", "2")]


def test_empty_members_are_allowed_and_dropped() -> None:
    assert parse_tracestate(["foo=1,,bar=2, ,"]) == [("foo", "1"), ("bar", "2")]
    assert parse_tracestate([""]) == []
    assert parse_tracestate(["foo=1", ""]) == [("foo", "1")]
    assert parse_tracestate([]) == []


def test_value_may_hold_inner_spaces_and_punctuation() -> None:
    assert parse_tracestate(["foo=a b!~"]) == [("foo", "a b!~")]


@pytest.mark.parametrize(
    ("lines", "kept"),
    [
        (["foo=1,foo=1"], [("foo", "1")]),
        (["foo=1,foo=2"], [("foo", "1")]),
        (["foo=1,bar=2,foo=3"], [("foo", "1"), ("bar", "2")]),
        (["foo=1", "foo=2"], [("foo", "1")]),  # across field lines too
    ],
)
def test_duplicated_keys_keep_the_first(lines: list[str], kept: list[tuple[str, str]]) -> None:
    # The spec lets a vendor discard duplicates it did not make; the rest of the header
    # stays (the older rule dropped all of it).
    assert parse_tracestate(lines) == kept


@pytest.mark.parametrize(
    "value",
    [
        "foo =1",
        "FOO=1",
        "foo.bar=1",
        "=1",
        "foo",
        "foo=1,bar",
        "@foo=1,bar=2",  # a key starts with a letter or a digit
        "_foo=1",
        "Foo@bar=1",
        "foo@Bar=1",
        "foo=bar=baz",
        "foo=,bar=3",
        "foo=1\tx",
        "foo=\x7f",
        "foo=a,b=\x01",
    ],
)
def test_invalid_members_drop_the_whole_header(value: str) -> None:
    assert parse_tracestate([value]) is None


@pytest.mark.parametrize(
    "key",
    [
        "foo@",  # "@" is a key character like any other now
        "foo@@bar",
        "foo@bar@baz",
        "1foo",  # a key may start with a digit
        "tenant@system",
        "1tenant@system",
        "foo@1bar",
        "t" * 241 + "@" + "v" * 14,
        "t" * 242 + "@v",  # no limit on the part before "@" but the key's own
        "t@" + "v" * 15,  # nor on the part after it
        "z" * 256,
        "a-b_c*d/e9@f",
        "abcdefghijklmnopqrstuvwxyz0123456789_-*/@a-z0-9_-*/",
    ],
)
def test_keys_of_the_current_grammar_are_kept(key: str) -> None:
    assert parse_tracestate([f"foo=1,{key}=2"]) == [("foo", "1"), (key, "2")]


@pytest.mark.parametrize("key", ["z" * 257, "t" * 242 + "@" + "v" * 14])
def test_a_key_over_256_characters_drops_the_header(key: str) -> None:
    assert parse_tracestate(["foo=1", f"{key}=1"]) is None


def test_every_allowed_value_character_is_kept() -> None:
    value = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
    assert parse_tracestate([f"foo={value}"]) == [("foo", value)]


def test_value_length_limit() -> None:
    assert parse_tracestate(["foo=" + "v" * 256]) is not None
    assert parse_tracestate(["foo=" + "v" * 257]) is None


def test_32_members_kept_33_dropped() -> None:
    members = [f"bar{i:02d}={i:02d}" for i in range(1, 33)]
    assert parse_tracestate([",".join(members)]) is not None
    assert len(parse_tracestate([",".join(members)]) or []) == 32
    assert parse_tracestate([",".join([*members, "bar33=33"])]) is None
    # Split over field lines, as the W3C suite sends them: the same limit.
    assert parse_tracestate([",".join(members[:30]), ",".join([*members[30:], "bar33=33"])]) is None
    # Empty members and repeated keys do not count toward the limit.
    assert parse_tracestate([",".join(members) + ",,,"]) is not None
    assert len(parse_tracestate([",".join([*members, "bar01=x"])]) or []) == 32


def test_over_512_characters_large_entries_go_first() -> None:
    big = ("big", "x" * 200)
    small = [(f"k{i:02d}", "v" * 20) for i in range(14)]  # 14 * 24 - 1 = 335 characters
    members = [small[0], big, *small[1:]]
    parsed = parse_tracestate([",".join(f"{k}={v}" for k, v in members)])
    assert parsed == small
    assert len(",".join(f"{k}={v}" for k, v in parsed)) <= 512


def test_over_512_characters_then_from_the_end() -> None:
    members = [(f"k{i:02d}", "v" * 60) for i in range(10)]  # 64 characters each + commas
    kept = truncate_tracestate(members)
    assert kept == members[:7]  # 7 * 64 + 6 = 454; eight would be 519
    assert truncate_tracestate(members[:7]) == members[:7]
