"""Request path normalization, as Envoy's ``normalize_path`` and ``merge_slashes`` with
``path_with_escaped_slashes_action`` (Istio's ``pathNormalization``).

The normalized path is the one routes match *and* the one forwarded: an upstream that
normalizes on its own then sees the path the proxy's policies saw, so ``/public/../admin``
cannot reach ``/admin`` through a route for ``/public``. Pure functions, no I/O.

Steps, on the path only (the query is kept as it came):

1. a ``#`` anywhere in the target is refused (a fragment is never part of a request);
2. percent-encodings are checked; unreserved characters (RFC 3986 2.3) are decoded,
   other encodings are kept with upper-case hex; ``%2F``/``%5C`` follow
   ``escaped_slashes`` (``reject``: 400, ``keep``: left encoded, ``unescape``: decoded);
3. ``\\`` becomes ``/`` (as Envoy's URL canonicalizer does);
4. runs of ``/`` become one (``merge_slashes``);
5. ``.`` and ``..`` segments are resolved (RFC 3986 5.2.4); ``..`` never climbs above
   the root.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ESCAPED_SLASHES", "PathRejected", "normalize_path"]

#: what to do with ``%2F`` and ``%5C`` in a path.
ESCAPED_SLASHES: Final = ("reject", "keep", "unescape")

_HEX = "0123456789abcdefABCDEF"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class PathRejected(ValueError):
    """A path that cannot be normalized safely; answered ``400``."""


def _decode(path: str, escaped_slashes: str) -> str:
    out: list[str] = []
    i = 0
    end = len(path)
    while i < end:
        c = path[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if i + 2 >= end:
            raise PathRejected("truncated percent-encoding in the path")
        hi, lo = path[i + 1], path[i + 2]
        if hi not in _HEX or lo not in _HEX:
            raise PathRejected(f"invalid percent-encoding {path[i:i + 3]!r} in the path")
        char = chr(int(hi + lo, 16))
        if char in _UNRESERVED:
            out.append(char)
        elif char in "/\\":
            if escaped_slashes == "reject":
                raise PathRejected(
                    f"escaped slash {path[i:i + 3]!r} in the path (path_with_escaped_slashes: "
                    "reject)"
                )
            out.append(char if escaped_slashes == "unescape" else "%" + (hi + lo).upper())
        else:
            out.append("%" + (hi + lo).upper())
        i += 3
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")
    kept: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                kept.append("")
        elif segment == "..":
            if len(kept) > 1:
                kept.pop()
            if last:
                kept.append("")
        else:
            kept.append(segment)
    result = "/".join(kept)
    return result if result.startswith("/") else "/" + result


def normalize_path(
    target: str, merge_slashes: bool = True, escaped_slashes: str = "reject"
) -> str:
    """The normalized origin-form ``target`` (path and query).

    :raises PathRejected: for a fragment, a bad or (by ``escaped_slashes``) forbidden
        percent-encoding.
    """
    if (
        "%" not in target
        and "/." not in target
        and "//" not in target
        and "\\" not in target
        and "#" not in target
    ):
        return target  # the common case: nothing to do, nothing copied
    if "#" in target:
        raise PathRejected("a '#' fragment in the request target")
    path, mark, query = target.partition("?")
    if "%" in path:
        path = _decode(path, escaped_slashes)
    path = path.replace("\\", "/")
    if merge_slashes:
        while "//" in path:
            path = path.replace("//", "/")
    if "/." in path:
        path = _remove_dot_segments(path)
    return path + mark + query
