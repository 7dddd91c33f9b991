"""What a policy may write into a message: ``Headers`` refuses any field that could
split the request or response it is encoded into, whatever it wrote before."""

from __future__ import annotations

import pytest

from sidemesh import Headers

SPLITTING_NAMES = ["x-a\n", "x-a\r\n", "x-a\r", "x-a\x00", "x a", "x-a:", "", "x-a\nx-b"]
SPLITTING_VALUES = ["1\r\nTransfer-Encoding: chunked", "1\n", "1\r", "a\x00b"]


@pytest.mark.parametrize("name", SPLITTING_NAMES)
def test_a_name_that_is_not_a_token_is_refused_by_every_way_in(name: str) -> None:
    for write in (Headers().add, Headers().set, Headers().setdefault):
        with pytest.raises(ValueError, match="invalid header field"):
            write(name, "v")
    with pytest.raises(ValueError, match="invalid header field"):
        Headers([(name, "v")])


@pytest.mark.parametrize("value", SPLITTING_VALUES)
def test_a_value_with_a_line_break_or_nul_is_refused_even_under_a_name_used_before(
    value: str,
) -> None:
    headers = Headers()
    headers.add("x-tag", "fine")
    with pytest.raises(ValueError, match="invalid header field"):
        headers.add("x-tag", value)
    with pytest.raises(ValueError, match="invalid header field"):
        headers.set("x-tag", value)
    assert headers.encode() == b"x-tag: fine\r\n"


def test_names_are_lower_cased_and_every_token_character_is_allowed() -> None:
    name = "X-Ab!#$%&'*+.^_`|~09"
    headers = Headers([(name, "v")])
    assert headers.get(name) == "v"
    assert headers.encode() == f"{name.lower()}: v\r\n".encode()
