"""Requests, responses and attempts as policies see them."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from sidemesh.datapath.connections import ConnectionInfo
from sidemesh.datapath.flags import ResponseFlag
from sidemesh.datapath.stash import Stash
from sidemesh.datapath.views import EndpointView

__all__ = [
    "OVERFLOW_TEXT",
    "OVERLOADED_HEADER",
    "Attempt",
    "Headers",
    "Request",
    "Response",
    "is_grpc",
]

#: on every answer the proxy gives because a limit was reached (Envoy: x-envoy-overloaded).
OVERLOADED_HEADER = "x-sidemesh-overloaded"
#: Envoy's text for a request refused by a circuit breaker.
OVERFLOW_TEXT = "upstream connect error or disconnect/reset before headers. reset reason: overflow"


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: names found valid: policies write the same few names on every request, and a regex
#: per field cost a microsecond each; bounded so hostile input cannot grow it.
_VALID_NAMES: set[str] = set()
_VALID_NAMES_MAX = 1024


def _check(name: str, value: str) -> None:
    # A policy's header must not be able to split the message it is written into.
    # fullmatch: ``$`` would let a name end in a newline.
    if name not in _VALID_NAMES:
        if _TOKEN.fullmatch(name) is None:
            raise ValueError(f"invalid header field {name!r}: {value!r}")
        if len(_VALID_NAMES) < _VALID_NAMES_MAX:
            _VALID_NAMES.add(name)
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"invalid header field {name!r}: {value!r}")


class Headers:
    """An ordered multi-map of header fields. Names are stored lower-case (as Envoy
    forwards them); values are ``str`` (latin-1, as HTTP/1.1 defines them)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items:
            _check(name, value)
            self._items.append((name.lower(), value))

    @classmethod
    def _trusted(cls, items: list[tuple[str, str]]) -> Headers:
        # The parser already lower-cased the names: skip the copy on the hot path.
        headers = cls()
        headers._items = items
        return headers

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self._items:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self._items if key == name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        name = name.lower()
        # A plain loop: any() with a generator costs a frame per field, per request.
        for key, _ in self._items:  # noqa: SIM110
            if key == name:
                return True
        return False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` with one field."""
        _check(name, value)
        self.remove(name)
        self._items.append((name.lower(), value))

    def setdefault(self, name: str, value: str) -> str:
        current = self.get(name)
        if current is None:
            _check(name, value)
            self._items.append((name.lower(), value))
            return value
        return current

    def add(self, name: str, value: str) -> None:
        _check(name, value)
        self._items.append((name.lower(), value))

    def _add_trusted(self, name: str, value: str) -> None:
        # The core's own fields (lower-case names, values it made or parsed): no checks.
        self._items.append((name, value))

    def remove(self, name: str) -> None:
        """Remove every field called ``name`` (nothing is copied when there is none)."""
        name = name.lower()
        for key, _ in self._items:
            if key == name:
                self._items = [(k, v) for k, v in self._items if k != name]
                return

    def remove_all(self, names: Iterable[str]) -> None:
        """Remove every field whose name is in ``names``, in one pass."""
        drop = {name.lower() for name in names}
        self._items = [(k, v) for k, v in self._items if k not in drop]

    def encode(self) -> bytes:
        return "".join([f"{k}: {v}\r\n" for k, v in self._items]).encode("latin-1")


def is_grpc(content_type: str | None) -> bool:
    """Whether a request with this Content-Type is gRPC: ``application/grpc`` or with a
    ``+`` suffix (``+proto``, ``+json``), as Envoy tells; gRPC-Web is not."""
    if content_type is None:
        return False
    value = content_type.split(";", 1)[0].strip().lower()
    return value == "application/grpc" or value.startswith("application/grpc+")


class Request:
    """One downstream request, as the chain sees it.

    ``method``, ``path`` (the request target in origin form, query included), ``host``
    and ``headers`` may be changed by request hooks; ``cluster`` may be changed to send
    the request elsewhere (a split to another cluster). ``stash`` keeps typed
    per-request state between a policy's hooks (see :class:`~sidemesh.StashKey`).
    ``log`` holds extra access-log fields; :meth:`add_flag` adds a response flag.
    """

    __slots__ = (
        "_core",
        "attempts",
        "cluster",
        "connection",
        "deadline",
        "flags",
        "headers",
        "host",
        "listener",
        "log",
        "method",
        "mirrors",
        "path",
        "peer_identity",
        "per_try_timeout",
        "request_id",
        "retry_buffer_limit",
        "route",
        "scheme",
        "start",
        "stash",
        "tried",
        "version",
    )

    def __init__(
        self,
        method: str,
        path: str,
        host: str,
        headers: Headers,
        connection: ConnectionInfo,
        listener: str = "",
        scheme: str = "http",
        version: str = "1.1",
    ) -> None:
        self.method = method
        self.path = path
        self.host = host
        self.headers = headers
        self.connection = connection
        self.listener = listener
        self.scheme = scheme
        self.version = version
        self.route = ""
        self.cluster = ""
        self.request_id = ""
        self.stash = Stash()
        self.log: dict[str, Any] = {}
        #: response flags policies added (:meth:`add_flag`); the core's own follow them.
        self.flags: list[ResponseFlag] = []
        #: the route timeout's end on the ``time.monotonic()`` clock; ``None``: no timeout.
        self.deadline: float | None = None
        #: how many attempts have been made so far (1 during the first).
        self.attempts = 0
        #: endpoints already tried, in order.
        self.tried: list[EndpointView] = []
        #: set by a policy (retry) to bound every attempt; ``None`` means none.
        self.per_try_timeout: float | None = None
        #: bytes of request body the core keeps so the request can be sent again.
        self.retry_buffer_limit = 0
        #: the verified SPIFFE ID of the downstream peer, set by an mTLS policy.
        self.peer_identity: str | None = None
        self.start = 0.0
        # The first value of each field the core itself reads, noted by the parser so
        # the request path never scans the headers for them (before request hooks run).
        self._core: dict[str, str] = {}
        #: (cluster, subset or None) pairs that get a fire-and-forget copy of this
        #: request once it is answered; see :meth:`mirror`.
        self.mirrors: list[tuple[str, str | None]] = []

    def add_flag(self, flag: ResponseFlag) -> None:
        """Add a response flag to this request's access-log line, metrics and
        ``on_complete`` (a circuit breaker that answers adds ``UPSTREAM_OVERFLOW``)."""
        if flag not in self.flags:
            self.flags.append(flag)

    def time_left(self) -> float | None:
        """Seconds until the route timeout ends the request (never below 0), or
        ``None`` when the route has none. A retry is pointless once this is 0."""
        deadline = self.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def mirror(self, cluster: str, subset: str | None = None) -> None:
        """Ask the core to send a shadow copy of this request to ``cluster`` (and
        ``subset``) after the client's answer, with ``-shadow`` appended to the Host as
        Envoy does. The copy's answer, slowness or failure never reaches the client; a
        body larger than the mirror buffer (1 MiB) is not mirrored."""
        self.mirrors.append((cluster, subset))

    @property
    def protocol(self) -> str:
        """``HTTP/1.1``, ``HTTP/1.0`` or ``HTTP/2``: what the client spoke (Envoy's
        %PROTOCOL%); the hooks are the same for every version."""
        return f"HTTP/{self.version}"

    @property
    def is_grpc(self) -> bool:
        """Whether this is a gRPC call (``content-type: application/grpc``, ``+proto``
        ...; not gRPC-Web), as Envoy tells one."""
        return is_grpc(self.headers.get("content-type"))

    @property
    def path_only(self) -> str:
        return self.path.split("?", 1)[0]


class Response:
    """A response head (and, for direct answers, a small body)."""

    __slots__ = ("_headers", "_raw", "body", "reason", "status", "trailers")

    def __init__(
        self,
        status: int,
        headers: Headers | None = None,
        body: bytes = b"",
        reason: str = "",
    ) -> None:
        self.status = status
        # None until first read: an upstream's head stays raw (see _from_upstream).
        self._headers: Headers | None = headers
        self._raw: list[tuple[bytes, bytes]] | None = None
        self.body = body
        self.reason = reason
        #: the upstream's trailers (HTTP/2; gRPC's grpc-status), once the body ended.
        self.trailers: Headers | None = None

    @classmethod
    def _from_upstream(cls, status: int, raw: list[tuple[bytes, bytes]]) -> Response:
        # An upstream's head stays as the parser's bytes until a policy reads the headers:
        # most responses are relayed untouched, and decoding costs per field.
        response = cls(status)
        response._raw = raw
        return response

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            raw = self._raw or []
            headers = self._headers = Headers._trusted(
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
            )
        return headers

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._headers = value

    def _set_trailers(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.trailers = Headers._trusted(
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
        )

    @property
    def grpc_status(self) -> int | None:
        """The gRPC status of a gRPC response: from the trailers, or from the head of a
        trailers-only response (an error before any message); ``None`` when neither has
        a valid one (not gRPC, or the body has not ended yet)."""
        value = self.trailers.get("grpc-status") if self.trailers is not None else None
        if value is None:
            value = self.headers.get("grpc-status")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def raw_head(self) -> list[tuple[bytes, bytes]] | None:
        """The upstream's header fields as received (lower-case names), while no one
        has read or changed :attr:`headers`; ``None`` otherwise."""
        return self._raw if self._headers is None else None

    @classmethod
    def json(cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = json.dumps(payload).encode()
        return cls(status, Headers([("content-type", "application/json"), *headers]), body)

    @classmethod
    def text(cls, status: int, text: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, Headers([("content-type", "text/plain"), *headers]), text.encode())

    @classmethod
    def overflow(cls) -> Response:
        """The answer to a request a limit refused, as Envoy gives it: ``503``, its text,
        and ``x-sidemesh-overloaded: true``. Add flag ``UO`` with the answer."""
        return cls.text(503, OVERFLOW_TEXT, [(OVERLOADED_HEADER, "true")])


class Attempt:
    """The outcome of one try at the upstream, given to response hooks.

    :ivar number: 1 for the first try.
    :ivar endpoint: the endpoint tried (``None`` when none could be chosen).
    :ivar response: the response head, or ``None`` when the attempt failed.
    :ivar flag: the :class:`~sidemesh.ResponseFlag` of a failure (``UF``
        connect failure, ``UT`` timeout, ``UC`` connection reset/closed, ``UH`` no healthy
        upstream, ``UO`` overflow, ``UPE`` invalid response); ``None`` when it did not fail.
    :ivar error: a human-readable reason for a failure.
    :ivar duration: seconds the attempt took.
    """

    __slots__ = (
        "duration",
        "endpoint",
        "error",
        "flag",
        "number",
        "response",
        "retry_delay",
        "retry_requested",
    )

    def __init__(
        self,
        number: int,
        endpoint: EndpointView | None,
        response: Response | None = None,
        flag: ResponseFlag | None = None,
        error: str | None = None,
        duration: float = 0.0,
    ) -> None:
        self.number = number
        self.endpoint = endpoint
        self.response = response
        self.flag = flag
        self.error = error
        self.duration = duration
        self.retry_requested = False
        self.retry_delay = 0.0

    @property
    def status(self) -> int | None:
        return self.response.status if self.response is not None else None

    def retry(self, delay: float = 0.0) -> None:
        """Ask the core for another attempt after ``delay`` seconds."""
        self.retry_requested = True
        self.retry_delay = max(self.retry_delay, delay)
