"""Proxy ids as the API takes them: validated before they reach the store, and the
store's ownership and limit rules (:mod:`sidemesh.control.proxy_ids`) as HTTP answers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sidemesh.control.auth import PROXY_ID
from sidemesh.control.http import ApiError
from sidemesh.control.proxy_ids import ProxyIdTaken, TooManyProxies

__all__ = ["check_proxy_id", "claimed_proxy"]

#: How much of a refused id the error repeats (it may be a megabyte of query string).
_ECHO = 140


def check_proxy_id(value: str) -> str:
    """``value`` when it is a proxy id (1 to 128 ASCII letters, digits, ``-``, ``_`` or
    ``.``, starting with a letter or digit).

    :raises ApiError: 422 otherwise.
    """
    # fullmatch: the pattern's `$` would also match before a trailing newline.
    if not PROXY_ID.fullmatch(value):
        raise ApiError(422, f"{value[:_ECHO]!r} is not a proxy id: 1 to 128 letters, digits, "
                            "'-', '_' or '.', starting with a letter or digit")
    return value


@contextmanager
def claimed_proxy() -> Iterator[None]:
    """Around a store call that claims a proxy id: another service's id is ``403``, one
    id too many for the service ``429``."""
    try:
        yield
    except ProxyIdTaken as exc:
        raise ApiError(403, str(exc)) from None
    except TooManyProxies as exc:
        raise ApiError(429, str(exc)) from None
