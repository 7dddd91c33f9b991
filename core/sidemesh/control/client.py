"""The control API as an operator's commands call it (``sidemesh token --control``,
``sidemesh config``, ``sidemesh proxy-status``, ``sidemesh version``): the admin token
from a file or the environment, HTTPS trust through ``--control-ca`` only, the replicas
of ``--control`` in order, and every failure as one :class:`ControlError` a user can act
on — never a traceback."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from sidemesh.config.build import control_urls
from sidemesh.control.auth import TokenError, load_admin_token

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ADMIN_TOKEN_FILE_ENV",
    "CONTROL_ENV",
    "DEFAULT_CONTROL_URL",
    "ControlClient",
    "ControlError",
    "read_admin_token",
]

DEFAULT_CONTROL_URL = "http://127.0.0.1:15010"
CONTROL_ENV = "SIDEMESH_CONTROL"
ADMIN_TOKEN_FILE_ENV = "SIDEMESH_ADMIN_TOKEN_FILE"
ADMIN_TOKEN_ENV = "SIDEMESH_ADMIN_TOKEN"


class ControlError(Exception):
    """A call that failed, with what to tell the user.

    :param status: the HTTP status the control plane answered (``None``: no answer).
    :param errors: with a ``422`` for a config, every error as the API lists them.
    """

    def __init__(self, message: str, status: int | None = None,
                 errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.errors = list(errors)


def read_admin_token(token_file: str | None, default_file: Path) -> str:
    """``token_file``, else ``$SIDEMESH_ADMIN_TOKEN_FILE``, else ``$SIDEMESH_ADMIN_TOKEN``
    (the token itself), else ``default_file``.

    :raises ControlError: when none of them gives a token.
    """
    path = token_file or os.environ.get(ADMIN_TOKEN_FILE_ENV)
    if not path:
        token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
        if token:
            return token
        if not default_file.exists():
            raise ControlError(
                f"no admin token: {default_file} does not exist; give --admin-token-file "
                f"FILE, or set ${ADMIN_TOKEN_FILE_ENV} or ${ADMIN_TOKEN_ENV}")
        path = str(default_file)
    try:
        return load_admin_token(default_file.parent, path)[0]
    except TokenError as exc:
        raise ControlError(str(exc)) from None


class ControlClient:
    """Calls to one control plane (or the first of its replicas that accepts a
    connection), with the admin token.

    :param urls: ``--control``: one URL or several separated by commas.
    :param ca_file: ``--control-ca``: the bundle an ``https://`` replica must chain to.
    :raises ControlError: for a malformed URL list or an unreadable CA file.
    """

    def __init__(self, urls: str, token: str | None, ca_file: str | None = None,
                 timeout: float = 10.0) -> None:
        try:
            self.urls = control_urls(urls)
        except ValueError as exc:
            raise ControlError(f"--control: {exc}") from None
        verify: ssl.SSLContext | bool = True
        if ca_file:
            try:
                verify = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise ControlError(f"--control-ca {ca_file}: {reason}") from None
        self.url = self.urls[0]
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=timeout, verify=verify, headers=headers)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer of the first replica that accepts a connection (a request never
        sent can go to the next one whatever it is, a POST included).

        :raises ControlError: when none answers.
        """
        failures = []
        for url in self.urls:
            try:
                response = self._client.request(method, url + path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failures.append(f"{url}: {_reason(exc)}")
                continue
            except httpx.HTTPError as exc:
                raise ControlError(f"control plane {url}: {_reason(exc)}") from None
            self.url = url
            return response
        raise ControlError(f"control plane unreachable ({'; '.join(failures)})")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON body of a ``200``.

        :raises ControlError: with the control plane's own message for any other status.
        """
        response = self.request(method, path, **kwargs)
        try:
            answer = response.json()
        except ValueError:
            answer = {"error": response.text[:200]}
        if response.status_code != 200:
            message = answer.get("error", answer) if isinstance(answer, dict) else answer
            errors = answer.get("errors", []) if isinstance(answer, dict) else []
            raise ControlError(f"control plane {self.url} answered {response.status_code}: "
                               f"{message}", response.status_code, errors)
        return answer


def _reason(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        text += " (give the control plane's CA with --control-ca FILE: sidemesh control " \
                "--print-ca)"
    return text
