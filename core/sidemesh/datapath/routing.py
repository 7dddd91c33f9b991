"""Route matching, compiled once per config and called once per request.

Semantics follow Envoy's route configuration: routes are tried in order and the first
whose every condition holds wins. Hosts match like Envoy ``domains`` (case-insensitive;
``*``, ``*.suffix``/``*-suffix`` and ``prefix.*``/``prefix-*`` wildcards that never
match an empty part; the request's ``:port`` is ignored unless the configured host has
one). Paths are matched without the query string. Header matches see all values of a
repeated header joined with ``,``. Regexes have RE2 semantics (:mod:`.regex`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sidemesh.datapath.messages import Headers
from sidemesh.datapath.model import RouteConfig, RouteMatch
from sidemesh.datapath.regex import compile_regex

__all__ = ["CompiledMatch", "RouteTable", "strip_port"]

_EXACT, _SUFFIX, _PREFIX, _ANY = 0, 1, 2, 3


def strip_port(host: str) -> str:
    """``"reviews:9080"`` -> ``"reviews"``; ``"[::1]:80"`` -> ``"[::1]"``."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(":")
    return host[:colon] if colon != -1 else host


class CompiledMatch:
    """One route's conditions, ready to test. Each ``*_ok`` method checks one condition
    so ``sidemesh explain`` can say which one failed."""

    __slots__ = (
        "_has_port",
        "_headers",
        "_host",
        "_host_kind",
        "_methods",
        "_path_exact",
        "_path_prefix",
        "_path_regex",
        "config",
        "destination",
    )

    def __init__(self, match: RouteMatch) -> None:
        self.config = match
        host = (match.host or "*").lower()
        self._has_port = not host.endswith("*") and strip_port(host) != host
        if host == "*":
            self._host_kind, self._host = _ANY, ""
        elif host.startswith("*"):
            self._host_kind, self._host = _SUFFIX, host[1:]
        elif host.endswith("*"):
            self._host_kind, self._host = _PREFIX, host[:-1]
        else:
            self._host_kind, self._host = _EXACT, host
        self._path_prefix = match.prefix
        self._path_exact = match.path
        self._path_regex = compile_regex(match.regex) if match.regex is not None else None
        self._headers = tuple(
            (
                h.name.lower(),
                h.kind,
                compile_regex(h.value) if h.kind == "regex" and isinstance(h.value, str) else None,
                h.value,
            )
            for h in match.headers
        )
        self._methods = frozenset(m.upper() for m in match.methods) or None
        #: the original-destination conditions, if any (``destination_ok``).
        self.destination = match.destination is not None or match.destination_port is not None

    def host_ok(self, host: str, bare_host: str | None = None) -> bool:
        """``host`` must already be lower-case; ``bare_host`` is it without its port
        (computed when not given)."""
        kind = self._host_kind
        if kind == _ANY:
            return True
        if not self._has_port:
            host = strip_port(host) if bare_host is None else bare_host
        if kind == _EXACT:
            return host == self._host
        if kind == _SUFFIX:
            return len(host) > len(self._host) and host.endswith(self._host)
        return len(host) > len(self._host) and host.startswith(self._host)

    def path_ok(self, path: str) -> bool:
        """``path`` without its query string."""
        if self._path_prefix is not None:
            return path.startswith(self._path_prefix)
        if self._path_exact is not None:
            return path == self._path_exact
        if self._path_regex is not None:
            return self._path_regex.fullmatch(path) is not None
        return True

    def destination_ok(self, destination: str | None) -> bool:
        """``destination``: the connection's original destination, ``host:port``."""
        if not self.destination:
            return True
        if destination is None:
            return False
        host, _, port = destination.rpartition(":")
        wanted = self.config.destination
        if wanted is not None and wanted != destination and wanted != host:
            return False
        wanted_port = self.config.destination_port
        return wanted_port is None or str(wanted_port) == port

    def method_ok(self, method: str) -> bool:
        return self._methods is None or method.upper() in self._methods

    def failing_header(self, headers: Headers) -> str | None:
        """The name of the first header condition that does not hold, or ``None``."""
        for name, kind, pattern, expected in self._headers:
            values = headers.get_all(name)
            if kind == "present":
                if bool(values) != expected:
                    return name
                continue
            if not values:
                return name
            value = values[0] if len(values) == 1 else ",".join(values)
            if kind == "exact":
                ok = value == expected
            elif kind == "prefix":
                ok = isinstance(expected, str) and value.startswith(expected)
            else:
                ok = pattern is not None and pattern.fullmatch(value) is not None
            if not ok:
                return name
        return None

    def matches(self, method: str, host: str, bare_host: str, path: str, headers: Headers) -> bool:
        """All conditions at once; ``method`` upper-case, ``host`` lower-case, and
        ``bare_host`` the host without its port."""
        if self._host_kind == _EXACT:
            if (host if self._has_port else bare_host) != self._host:
                return False
        elif self._host_kind != _ANY and not self.host_ok(host, bare_host):
            return False
        if self._path_prefix is not None:
            if not path.startswith(self._path_prefix):
                return False
        elif not self.path_ok(path):
            return False
        if self._methods is not None and method not in self._methods:
            return False
        return not self._headers or self.failing_header(headers) is None


class RouteTable:
    """A listener's routes, compiled: :meth:`match` returns the first that matches."""

    __slots__ = ("compiled", "routes")

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self.routes = tuple(routes)
        self.compiled = tuple(CompiledMatch(route.match) for route in self.routes)

    def match(
        self, method: str, host: str, path: str, headers: Headers, destination: str | None = None
    ) -> int | None:
        """Index of the first route matching the request, or ``None``.

        :param host: the Host header or authority (any case, port allowed).
        :param path: the request target's path; a query string is ignored.
        :param destination: the connection's original destination (``host:port``), if it
            was redirected to the listener.
        """
        host = host.lower()
        query = path.find("?")
        if query != -1:
            path = path[:query]
        method = method.upper()
        bare_host = strip_port(host)
        for index, compiled in enumerate(self.compiled):
            if compiled.matches(method, host, bare_host, path, headers) and (
                not compiled.destination or compiled.destination_ok(destination)
            ):
                return index
        return None
