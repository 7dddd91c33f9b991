"""The chunked decoder (chunked.py): every table is run whole, one byte at a time and in
random pieces, since a decoder that is right only when a line arrives whole is wrong."""

from __future__ import annotations

import random

import pytest

from sidemesh.datapath.chunked import MAX_CHUNK_LINE, ChunkedDecoder
from sidemesh.datapath.codec import (
    LAST_CHUNK,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    CodecError,
    encode_chunk,
)


def pieces(data: bytes, how: str) -> list[bytes]:
    if how == "whole":
        return [data]
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(len(data))
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 5))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def decode(data: bytes, how: str) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out = []
    for piece in pieces(data, how):
        out.extend(decoder.feed(piece))
    return b"".join(out), decoder


HOW = ["whole", "bytes", "random"]

VALID = [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b""),
    (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world", b""),
    (b"0\r\n\r\n", b"", b""),
    (b"A\r\n0123456789\r\nf\r\n" + b"x" * 15 + b"\r\n0\r\n\r\n", b"0123456789" + b"x" * 15, b""),
    (b"0005\r\nhello\r\n000\r\n\r\n", b"hello", b""),
    (b"2\r\n\r\n\r\n0\r\n\r\n", b"\r\n", b""),
    # extensions (RFC 9112 7.1.1): names, values, quoted strings, BWS before ";" and "="
    (b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"hello", b""),
    (b"5;a\r\nhello\r\n0;last\r\n\r\n", b"hello", b""),
    (b'5;a="x y;z"\r\nhello\r\n0\r\n\r\n', b"hello", b""),
    (b'5;a="q\\"x\\\\"\r\nhello\r\n0\r\n\r\n', b"hello", b""),
    (b"5 ; a = b ;c\t;d=e\r\nhello\r\n0\r\n\r\n", b"hello", b""),
    (b"5;" + b"a" * (MAX_CHUNK_LINE - 4) + b"\r\nhello\r\n0\r\n\r\n", b"hello", b""),
    # trailers are checked and dropped; a Content-Length trailer frames nothing
    (b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n", b"hello", b""),
    (b"5\r\nhello\r\n0\r\nContent-Length: 999\r\nExpires:\r\n\r\n", b"hello", b""),
    (b"0\r\nX: a\tb \xff\r\n\r\n", b"", b""),
    # what follows the body is the next request's
    (b"0\r\n\r\nG", b"", b"G"),
    (b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n", b"abc", b"GET / HTTP/1.1\r\n\r\n"),
]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(("data", "body", "unused"), VALID)
def test_valid(data: bytes, body: bytes, unused: bytes, how: str) -> None:
    out, decoder = decode(data, how)
    assert out == body
    assert decoder.done and decoder.unused == unused
    decoder.end()
    assert decoder.feed(b"more") == [] and decoder.unused == unused + b"more"


INVALID = [
    # chunk sizes
    (b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    (b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n", 400),
    (b"10000000000000000\r\n", 400),
    (b"+5\r\nhello\r\n", 400),
    (b"-5\r\nhello\r\n", 400),
    (b" 5\r\nhello\r\n", 400),
    (b"5 \r\nhello\r\n", 400),
    (b"\r\nhello\r\n", 400),
    (b"g\r\n", 400),
    (b"5\x00\r\nhello\r\n", 400),
    # line ends: CRLF only
    (b"5\nhello\r\n0\r\n\r\n", 400),
    (b"5\r\nhello\n0\r\n\r\n", 400),
    (b"5\r\nhello\r0\r\n\r\n", 400),
    (b"5\rX\r\nhello\r\n", 400),
    (b"5\r\nhelloXX0\r\n\r\n", 400),
    (b"0\r\n\n", 400),
    (b"0\r\nX: 1\n\r\n", 400),
    (b"\n", 400),
    # extensions
    (b"5;\r\nhello\r\n", 400),
    (b"5;=b\r\nhello\r\n", 400),
    (b"5;a=\r\nhello\r\n", 400),
    (b'5;a="x\r\nhello\r\n', 400),
    (b'5;a="x\x01"\r\nhello\r\n', 400),
    (b"5;a=b \r\nhello\r\n", 400),
    (b"5;a b\r\nhello\r\n", 400),
    (b"5;a=b c\r\nhello\r\n", 400),
    (b"5;a=(b)\r\nhello\r\n", 400),
    (b"5,a\r\nhello\r\n", 400),
    # too long a chunk-size line: refused before its end arrives
    (b"5;" + b"a" * (MAX_CHUNK_LINE - 3) + b"\r\nhello\r\n", 400),
    (b"5;" + b"a" * (2 * MAX_CHUNK_LINE), 400),
    (b"0" * (MAX_CHUNK_LINE + 1), 400),
    # trailers
    (b"0\r\nX: 1\r\n folded\r\n\r\n", 400),
    (b"0\r\n X: 1\r\n\r\n", 400),
    (b"0\r\nNoColon\r\n\r\n", 400),
    (b"0\r\nX : 1\r\n\r\n", 400),
    (b"0\r\n: 1\r\n\r\n", 400),
    (b"0\r\nX: a\x00b\r\n\r\n", 400),
    (b"0\r\nX: a\rb\r\n\r\n", 400),
    (b"0\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1)), 431),
    (b"0\r\nX: " + b"v" * MAX_HEADER_BYTES, 431),
    (b"0\r\n" + b"X: " + b"v" * 1000 + b"\r\nY: " + b"v" * MAX_HEADER_BYTES, 431),
]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(("data", "status"), INVALID)
def test_invalid(data: bytes, status: int, how: str) -> None:
    with pytest.raises(CodecError) as info:
        decode(data, how)
    assert info.value.status == status


@pytest.mark.parametrize(
    "data", [b"", b"5", b"5\r\nhel", b"5\r\nhello", b"5\r\nhello\r\n", b"0\r\n", b"0\r\nX: 1\r\n"]
)
def test_a_body_cut_short_is_refused_at_the_end(data: bytes) -> None:
    _, decoder = decode(data, "whole")
    assert not decoder.done
    with pytest.raises(CodecError) as info:
        decoder.end()
    assert info.value.status == 400


def test_data_comes_out_as_it_arrives() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"a\r\n01234") == [b"01234"]
    assert decoder.feed(b"") == []
    assert decoder.feed(b"567") == [b"567"]
    assert decoder.feed(b"89\r") == [b"89"]
    assert decoder.feed(b"\n0\r\n") == [] and not decoder.done
    assert decoder.feed(b"\r\n") == [] and decoder.done


def test_a_sixteen_digit_size_is_a_size() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"7fffffffffffffff\r\nabc") == [b"abc"]
    assert not decoder.done


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(
    "chunks",
    [
        [],
        [b"x"],
        [b"hello", b" ", b"world"],
        [b"\r\n0\r\n\r\n", b"0\r\n"],
        [bytes(range(256)) * 40],
    ],
)
def test_encoded_chunks_decode_to_the_same_bytes(chunks: list[bytes], how: str) -> None:
    out, decoder = decode(b"".join(encode_chunk(c) for c in chunks) + LAST_CHUNK, how)
    assert out == b"".join(chunks) and decoder.done and decoder.unused == b""
