"""A strict, incremental decoder of chunked bodies (RFC 9112 7.1), without I/O: bytes
in, body data out, in whatever pieces the bytes arrive.

Strict where lenient parsers let requests be smuggled: a chunk size is hex digits only
(no ``0x``, sign or space), at most 16 significant ones; every line ends in CRLF (a bare
LF or CR is an error); a chunk-size line, extensions included, is at most
:data:`MAX_CHUNK_LINE` bytes; extensions and trailer fields follow the grammar. Trailer
fields are checked and dropped: they never frame anything (a trailer called
Content-Length is one more trailer to drop).
"""

from __future__ import annotations

from typing import Final

from sidemesh.datapath.codec import MAX_HEADER_BYTES, MAX_HEADERS, CodecError

__all__ = ["MAX_CHUNK_LINE", "ChunkedDecoder"]

#: the longest chunk-size line (size, extensions and CRLF) accepted.
MAX_CHUNK_LINE: Final = 4096

_SIZE: Final = 0
_DATA: Final = 1
_DATA_END: Final = 2
_TRAILER: Final = 3
_DONE: Final = 4

_CR: Final = 13
_LF: Final = 10
_SP: Final = 32
_HTAB: Final = 9
_TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: byte -> 1 for the characters of a token (RFC 9110 5.6.2).
_TOKEN = bytes(1 if c in _TCHARS else 0 for c in range(256))


class ChunkedDecoder:
    """Decodes one chunked body. :meth:`feed` takes bytes as they arrive and returns
    the body data they complete; after the last chunk and trailer section ``done`` is
    true and further bytes (the next request on the connection) collect in ``unused``.
    Malformed input raises :class:`~sidemesh.datapath.codec.CodecError` (400; 431 for
    trailers past the head limits)."""

    __slots__ = ("_buffer", "_left", "_state", "_trailer_bytes", "_trailers", "unused")

    def __init__(self) -> None:
        self._buffer = b""
        self._state = _SIZE
        #: bytes of the current chunk's data still to come.
        self._left = 0
        self._trailers = 0
        self._trailer_bytes = 0
        self.unused = b""

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> list[bytes]:
        """The body data ``data`` completes (a chunk may come out in several pieces)."""
        if self._state == _DONE:
            self.unused += data
            return []
        buf = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = _DATA_END
            elif state == _DATA_END:
                if buf[pos] != _CR or (pos + 1 < end and buf[pos + 1] != _LF):
                    raise CodecError(400, "chunk data not followed by CRLF")
                if pos + 1 == end:
                    break
                pos += 2
                self._state = _SIZE
            elif state == _SIZE:
                line_end = _line_end(buf, pos, end, MAX_CHUNK_LINE, 400, "chunk-size line")
                if line_end < 0:
                    break
                size = _chunk_size(buf, pos, line_end)
                pos = line_end + 2
                if size:
                    self._left = size
                    self._state = _DATA
                else:
                    self._state = _TRAILER
            else:
                room = MAX_HEADER_BYTES - self._trailer_bytes
                line_end = _line_end(buf, pos, end, room, 431, "trailer section")
                if line_end < 0:
                    break
                if line_end == pos:
                    self._state = _DONE
                    self.unused = buf[pos + 2 :]
                    self._buffer = b""
                    return out
                self._trailer(buf, pos, line_end)
                pos = line_end + 2
        self._buffer = buf[pos:]
        return out

    def end(self) -> None:
        """The input ended: refuse a body cut short."""
        if self._state != _DONE:
            raise CodecError(400, "chunked body ended before its last chunk")

    def _trailer(self, buf: bytes, start: int, stop: int) -> None:
        self._trailers += 1
        self._trailer_bytes += stop + 2 - start
        if self._trailers > MAX_HEADERS:
            raise CodecError(431, f"more than {MAX_HEADERS} trailer fields")
        _check_field_line(buf, start, stop)


def _line_end(buf: bytes, start: int, end: int, limit: int, status: int, what: str) -> int:
    """Where the CRLF ending the line at ``start`` begins, or -1 when it has not arrived
    yet; a line past ``limit`` bytes (CRLF included) is refused with ``status``."""
    lf = buf.find(b"\n", start, min(end, start + limit))
    if lf < 0:
        if end - start >= limit:
            raise CodecError(status, f"{what} too long")
        return -1
    if lf == start or buf[lf - 1] != _CR:
        raise CodecError(400, f"bare LF in {what}")
    return lf - 1


def _chunk_size(buf: bytes, start: int, stop: int) -> int:
    i = start
    while i < stop and _is_hex(buf[i]):
        i += 1
    if i == start:
        raise CodecError(400, "invalid chunk size")
    digits = buf[start:i].lstrip(b"0")
    if len(digits) > 16:
        raise CodecError(400, "chunk size too large")
    if i < stop:
        if buf[i] != 59 and not _is_blank(buf[i]):  # neither ";" nor BWS before one
            raise CodecError(400, "invalid chunk size")
        _check_extensions(buf, i, stop)
    return int(digits, 16) if digits else 0


def _is_hex(c: int) -> bool:
    return 48 <= c <= 57 or 65 <= c <= 70 or 97 <= c <= 102


def _check_extensions(buf: bytes, i: int, stop: int) -> None:
    """``*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`` from ``i``
    to ``stop``: whitespace only before a ``;``, never at the end of the line."""
    while i < stop:
        i = _skip_blanks(buf, i, stop)
        if i == stop:
            raise CodecError(400, "whitespace at the end of a chunk-size line")
        if buf[i] != 59:  # ";"
            raise CodecError(400, "invalid chunk extension")
        i = _token_end(buf, _skip_blanks(buf, i + 1, stop), stop)
        value = _skip_blanks(buf, i, stop)
        if value < stop and buf[value] == 61:  # "="
            value = _skip_blanks(buf, value + 1, stop)
            if value < stop and buf[value] == 34:  # a quoted string
                i = _quoted_end(buf, value, stop)
            else:
                i = _token_end(buf, value, stop)


def _is_blank(c: int) -> bool:
    return c in (_SP, _HTAB)


def _skip_blanks(buf: bytes, i: int, stop: int) -> int:
    while i < stop and _is_blank(buf[i]):
        i += 1
    return i


def _token_end(buf: bytes, i: int, stop: int) -> int:
    start = i
    while i < stop and _TOKEN[buf[i]]:
        i += 1
    if i == start:
        raise CodecError(400, "invalid chunk extension")
    return i


def _quoted_end(buf: bytes, i: int, stop: int) -> int:
    """The end of the quoted-string opening at ``i`` (RFC 9110 5.6.4)."""
    i += 1
    while i < stop:
        c = buf[i]
        if c == 34:
            return i + 1
        if c == 92:  # "\": quoted-pair
            i += 1
            if i == stop or not _is_text(buf[i]):
                raise CodecError(400, "invalid chunk extension")
        elif not _is_text(c):
            raise CodecError(400, "invalid chunk extension")
        i += 1
    raise CodecError(400, "unterminated quoted string in chunk extension")


def _is_text(c: int) -> bool:
    """HTAB, SP, visible characters and obs-text: what a field value or quoted string holds."""
    return c == _HTAB or _SP <= c <= 126 or c >= 128


def _check_field_line(buf: bytes, start: int, stop: int) -> None:
    """``field-name ":" OWS field-value OWS`` (no obs-fold, no control characters)."""
    i = start
    while i < stop and _TOKEN[buf[i]]:
        i += 1
    if i in (start, stop) or buf[i] != 58:  # ":"
        raise CodecError(400, "invalid trailer field")
    for j in range(i + 1, stop):
        if not _is_text(buf[j]):
            raise CodecError(400, "invalid character in a trailer field")
